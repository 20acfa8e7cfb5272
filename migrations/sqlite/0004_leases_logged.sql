-- Kept in step with migrations/postgres: SQLite's leases live in the memory of the one process
-- that holds the database (src/store/leases.rs), so there is nothing to change here.
SELECT 1;
