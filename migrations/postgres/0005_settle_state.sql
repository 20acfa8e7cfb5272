-- What each filesystem source last saw of each dataset: a fingerprint of its files (paths,
-- sizes, mtimes) and since when it has stayed so. Kept in the store so a restart, or
-- `thalamus run --once` from cron, resumes every settle window instead of starting it again.
-- A poll writes only what changed (a new or changed fingerprint, a vanished dataset).
CREATE TABLE settle_state (
    source      TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    fingerprint BIGINT NOT NULL,
    since_ms    BIGINT NOT NULL,
    PRIMARY KEY (source, name)
);
