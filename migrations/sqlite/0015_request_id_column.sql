-- Status messages find their model by the Workspaces request id in its status. An index on
-- the JSON expression made every status write parse the old and the new status text to keep
-- the index (a third of a Kafka batch's UPDATE); the writers now store the id beside the
-- status (an integer `request_id` in it, else NULL), and the index is on that column.
ALTER TABLE objects ADD COLUMN request_id BIGINT;
UPDATE objects SET request_id = json_extract(status, '$.request_id')
    WHERE json_type(status, '$.request_id') = 'integer';
DROP INDEX objects_request_id;
CREATE INDEX objects_request_id ON objects (request_id) WHERE request_id IS NOT NULL;
