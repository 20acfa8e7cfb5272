-- Messages that could not be applied: kept with their raw payload so nothing is lost, and
-- replayable by an operator. The consumer acknowledges them and moves on.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    transport   TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    routing_key TEXT,
    position    TEXT   NOT NULL,
    headers     TEXT   NOT NULL DEFAULT '[]',
    payload     BLOB   NOT NULL,
    reason      TEXT   NOT NULL,
    received_at BIGINT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

-- Status messages name a Workspaces request id; find its model without scanning.
CREATE INDEX objects_request_id ON objects (json_extract(status, '$.request_id'))
    WHERE json_extract(status, '$.request_id') IS NOT NULL;
