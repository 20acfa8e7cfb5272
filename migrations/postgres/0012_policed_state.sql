-- The state (ok, pending, backoff, error, waiting, deleting) an object was in when its
-- policies last saw it, so a model rule can react to a transition (`from` → `to`), such as
-- an Ingestion becoming enacted. Empty: policies have not seen the object yet.
ALTER TABLE objects ADD COLUMN policed_state TEXT NOT NULL DEFAULT '';
