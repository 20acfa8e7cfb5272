-- How each source's polls have been going, as the controller last stored it, for `thalamus
-- status`, the API and metrics: when a poll last worked, what last went wrong (a failed poll,
-- a skipped row, a broken query) and when, and how many items the last working poll saw and
-- skipped. Written when any of that changes (and at least every 10 minutes while a source
-- keeps working), so an idle poll writes nothing.
CREATE TABLE source_health (
    source          TEXT    PRIMARY KEY,
    -- ok (the last poll worked, nothing skipped), degraded (it worked, with problems),
    -- failing (it failed).
    state           TEXT    NOT NULL,
    last_success_at BIGINT,
    last_error      TEXT,
    last_error_at   BIGINT,
    failures        INTEGER NOT NULL DEFAULT 0,
    seen            BIGINT  NOT NULL DEFAULT 0,
    skipped         BIGINT  NOT NULL DEFAULT 0,
    updated_at      BIGINT  NOT NULL
);
