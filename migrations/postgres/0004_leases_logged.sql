-- Leases survive a crash or failover. An UNLOGGED table is emptied when PostgreSQL restarts
-- after a crash (and is not replicated to a standby), which freed every object to be claimed
-- again while its holder's step was still running: two replicas could run one object at once.
-- The cost is one WAL record per claim and per settle (measured by `thalamus bench`).
ALTER TABLE leases SET LOGGED;
-- Renewing and releasing a holder's leases find them without scanning.
CREATE INDEX leases_holder ON leases (holder);
