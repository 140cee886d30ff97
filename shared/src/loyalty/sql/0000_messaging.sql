-- Inbox and outbox, the same in every service's own schema (see loyalty/messaging.py).

-- Every consumed id, with the digest of its payload: a redelivery finds it and does nothing;
-- the same id with another payload is a conflict.
CREATE TABLE inbox (
    topic        text        NOT NULL,
    message_id   text        NOT NULL,
    digest       bytea       NOT NULL CHECK (length(digest) = 32),
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, message_id)
);

-- Messages written in the same transaction as the state change that emits them; the relay
-- publishes them in id order and deletes them once the broker acknowledged them.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
