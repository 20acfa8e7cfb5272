-- Leases survive a crash or failover. An UNLOGGED table is emptied when PostgreSQL restarts
-- after a crash (and is not replicated to a standby), which freed every object to be claimed
-- again while its holder's step was still running: two replicas could run one object at once.
-- The cost is the WAL of each claim and settle: about 15 % more for the lease rows alone
-- (measured with 100 × 1000 inserts and deletes). No index on `holder`: it would cost more
-- than the logging, and the one query by holder alone (giving back a failed pass's leases)
-- is rare and reads a table that holds only live leases.
ALTER TABLE leases SET LOGGED;
