-- Status messages find their model by the Workspaces request id in its status. An index on
-- the JSON expression made every status write parse the old and the new status text to keep
-- the index; the writers now store the id beside the status (an integer `request_id` in it,
-- else NULL), and the index is on that column (whose statistics ANALYZE keeps).
ALTER TABLE objects ADD COLUMN request_id BIGINT;
UPDATE objects SET request_id = CAST((status::jsonb) ->> 'request_id' AS BIGINT)
    WHERE jsonb_typeof((status::jsonb) -> 'request_id') = 'number'
    AND ((status::jsonb) ->> 'request_id') ~ '^-?[0-9]{1,18}$';
DROP INDEX objects_request_id;
CREATE INDEX objects_request_id ON objects (request_id) WHERE request_id IS NOT NULL;
ANALYZE objects;
