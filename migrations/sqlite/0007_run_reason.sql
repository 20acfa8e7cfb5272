-- Why an object is due, written with the change that made it due (a new object, a new spec,
-- a deletion, an operator's retry, an event, a recheck, a retry after a failure) and read
-- back as the cause of its next run: the audit trail's "cause" no longer guesses it from the
-- human sentence in backend_status.
ALTER TABLE objects ADD COLUMN reason TEXT NOT NULL DEFAULT 'new';
