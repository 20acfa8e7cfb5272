-- Fresh work ahead of a backlog: a claim takes what is due for news (a new object, a new
-- spec, a deletion, an event, an operator's retry, a dependency that converged) before the
-- rechecks and retries that an outage piles up, so a dataset that settles meanwhile does not
-- wait behind thousands of them. Each lane has its own index of what is dirty, in due order,
-- so either claim is a range scan; together they replace `objects_due`.
CREATE INDEX objects_due_news ON objects (kind, next_attempt_at)
    WHERE (enacted < generation OR deleted_at IS NOT NULL) AND reason NOT IN ('recheck', 'retry');
CREATE INDEX objects_due_again ON objects (kind, next_attempt_at)
    WHERE (enacted < generation OR deleted_at IS NOT NULL) AND reason IN ('recheck', 'retry');
DROP INDEX objects_due;
