-- The processes sharing this store, one row per holder id (the identity written into
-- leases). A process keeps its row alive with a heartbeat; a new process may take a holder id
-- only once the previous one's heartbeat has lapsed, and then takes over its leases at once:
-- a restart after a crash costs a heartbeat, not a lease. Also what operators see as
-- "replicas".
CREATE TABLE replicas (
    holder          TEXT   PRIMARY KEY,
    instance        TEXT   NOT NULL,
    started_at      BIGINT NOT NULL,
    heartbeat_until BIGINT NOT NULL
);
