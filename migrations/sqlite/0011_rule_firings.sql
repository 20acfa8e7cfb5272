-- Rule firings that published a message: a firing (rule, event id) writes its outbox rows
-- once, however often its message is redelivered or its policy runs again.
CREATE TABLE rule_firings (
    firing   TEXT   PRIMARY KEY,
    fired_at BIGINT NOT NULL
);
