-- Status events find their objects by request id. PostgreSQL keeps no statistics for the
-- expression of a partial index, so it guessed 0.5 % of the table per id: a batch of 256 ids
-- read as 72 % of it, and the lookup scanned the whole table (0.6 s at 50,000 objects, more
-- as the archive grows) instead of the index (0.4 ms). A full expression index has its
-- expression's statistics gathered by ANALYZE (and autovacuum), so the estimate is one row
-- an id. (SQLite's planner picks the index without statistics: its partial index stays.)
DROP INDEX objects_request_id;
CREATE INDEX objects_request_id ON objects (((status::jsonb) ->> 'request_id'));
ANALYZE objects;
