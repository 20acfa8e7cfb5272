-- Status messages find their model by the Workspaces request id in its status. An index on
-- the JSON expression made every status write parse the old and the new status text to keep
-- the index; the writers now store the id beside the status (an integer `request_id` in it,
-- else NULL), and the index is on that column (whose statistics ANALYZE keeps).
ALTER TABLE objects ADD COLUMN request_id BIGINT;
UPDATE objects SET request_id = CAST((status::json) ->> 'request_id' AS BIGINT)
    WHERE CASE WHEN json_typeof((status::json) -> 'request_id') = 'number'
        AND ((status::json) ->> 'request_id') ~ '^-?[0-9]{1,19}$'
        THEN CAST((status::json) ->> 'request_id' AS NUMERIC)
            BETWEEN -9223372036854775808 AND 9223372036854775807
        ELSE FALSE END;
DROP INDEX objects_request_id;
CREATE INDEX objects_request_id ON objects (request_id) WHERE request_id IS NOT NULL;
ANALYZE objects;
