-- The transactional outbox: what thalamus announces to the systems downstream, written in the
-- same transaction as the model change it announces, published by a relay that marks a row
-- sent only once the broker confirmed it. One row per message and transport.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    transport    TEXT   NOT NULL,
    topic        TEXT   NOT NULL,
    routing_key  TEXT   NOT NULL,
    message_type TEXT   NOT NULL,
    -- `<kind>/<key>` of the model the message is about: messages about one model go in order.
    model        TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    sent_at      BIGINT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
-- The relay reads only what is unsent: O(unsent), not O(all).
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
-- Sent rows are pruned after `outbox.retain_days`.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Who publishes the outbox, until when: one relay at a time across replicas, so no row is
-- published twice at once and messages about one model keep their order.
CREATE TABLE relay_lease (
    name   TEXT   PRIMARY KEY,
    holder TEXT   NOT NULL,
    until  BIGINT NOT NULL
);
