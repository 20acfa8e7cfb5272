-- Leases move out of the objects rows into their own narrow table: a claim inserts small
-- rows instead of rewriting wide ones (on PostgreSQL a lease written into objects cost a new
-- row version and an entry in every index, as much as the sync itself), and a settle deletes
-- them. A lease row names who holds an object and until when; an expired one may be taken.
CREATE UNLOGGED TABLE leases (
    id     BIGINT PRIMARY KEY,
    holder TEXT   NOT NULL,
    until  BIGINT NOT NULL
);
ALTER TABLE objects DROP COLUMN lease_holder;
ALTER TABLE objects DROP COLUMN lease_until;

-- Objects waiting on a dependency, usually none: a converged object wakes its waiting
-- dependents by looking here first, so the common case costs nothing.
CREATE INDEX objects_waiting ON objects (id) WHERE waiting_on IS NOT NULL;
-- UNLOGGED (PostgreSQL): leases are not worth a WAL record each. A crash or a failover loses
-- them, which only frees every object to be claimed again; steps are idempotent, and an
-- outcome whose lease is gone is never written over a new holder's.
