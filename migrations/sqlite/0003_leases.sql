-- Leases leave the objects rows. On SQLite they are kept in the memory of the one process
-- that holds the store (see src/store/leases.rs); on PostgreSQL in a `leases` table.
ALTER TABLE objects DROP COLUMN lease_holder;
ALTER TABLE objects DROP COLUMN lease_until;

-- Objects waiting on a dependency, usually none: a converged object wakes its waiting
-- dependents by looking here first, so the common case costs nothing.
CREATE INDEX objects_waiting ON objects (id) WHERE waiting_on IS NOT NULL;
