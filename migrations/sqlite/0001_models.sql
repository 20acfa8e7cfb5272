-- Generic desired-state objects (one table for every kind, as Kubernetes stores objects),
-- the links between them, and the executions audit trail. Times are Unix epoch milliseconds.
CREATE TABLE objects (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    spec            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT '{}',
    generation      BIGINT  NOT NULL DEFAULT 1,
    enacted         BIGINT  NOT NULL DEFAULT 0,
    revision        BIGINT  NOT NULL DEFAULT 1,
    policed         BIGINT  NOT NULL DEFAULT 0,
    backend_code    INTEGER NOT NULL DEFAULT 0,
    backend_status  TEXT    NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    waiting_on      TEXT,
    last_error      TEXT,
    last_success_at BIGINT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    deleted_at      BIGINT,
    need_delete     BOOLEAN NOT NULL DEFAULT FALSE,
    lease_holder    TEXT,
    lease_until     BIGINT,
    UNIQUE (kind, key)
);

-- A sync pass reads only what is dirty and due: O(dirty), not O(all).
CREATE INDEX objects_due ON objects (kind, next_attempt_at)
    WHERE enacted < generation OR deleted_at IS NOT NULL;
-- The policy pass reads only objects changed since policies last saw them.
CREATE INDEX objects_unpoliced ON objects (id) WHERE policed < revision;

CREATE TABLE links (
    src_id   BIGINT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    field    TEXT   NOT NULL,
    dst_kind TEXT   NOT NULL,
    dst_key  TEXT   NOT NULL,
    PRIMARY KEY (src_id, field, dst_kind, dst_key)
);
CREATE INDEX links_dst ON links (dst_kind, dst_key);

CREATE TABLE executions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    step        TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    cause       TEXT   NOT NULL,
    holder      TEXT   NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome     TEXT   NOT NULL,
    error       TEXT
);
CREATE INDEX executions_object ON executions (kind, key, id);
CREATE INDEX executions_started ON executions (started_at);
