-- Kept in step with migrations/postgres. On SQLite one process holds the store (its lock
-- file sees to it), so the table stays empty; it exists so both backends share one schema.
CREATE TABLE replicas (
    holder          TEXT    PRIMARY KEY,
    instance        TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    heartbeat_until INTEGER NOT NULL
);
