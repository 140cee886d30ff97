-- reward-fulfilment: catalog (from loyalty.programs.v1), members (from loyalty.members.v1),
-- code pools and stock, and the redemption saga's orders with their public history.

-- Programs as last applied (the latest definition per program wins).
CREATE TABLE programs (
    program_id    text        PRIMARY KEY,
    definition    jsonb       NOT NULL,
    content_hash  text        NOT NULL,
    applied_at    timestamptz NOT NULL
);

-- Our copy of the members and how to reach them (loyalty.members.v1).
CREATE TABLE members (
    program_id  text NOT NULL,
    member_id   text NOT NULL,
    locale      text,
    channel     text CHECK (channel IN ('sms', 'email')),
    phone       text,
    email       text,
    PRIMARY KEY (program_id, member_id)
);

CREATE TABLE identifiers (
    program_id  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('customer', 'card', 'phone', 'email')),
    value       text NOT NULL,
    member_id   text NOT NULL,
    PRIMARY KEY (program_id, kind, value)
);

-- What can still be allocated: one row per code pool (kind 'pool', name = the pool) and per
-- physical reward (kind 'stock', name = the reward id). Allocation takes this row's lock, so
-- two replicas never both take the last unit, and `total - allocated` is the stock left.
CREATE TABLE inventory (
    program_id  text   NOT NULL,
    kind        text   NOT NULL CHECK (kind IN ('pool', 'stock')),
    name        text   NOT NULL,
    total       bigint NOT NULL DEFAULT 0 CHECK (total >= 0),
    allocated   bigint NOT NULL DEFAULT 0 CHECK (allocated >= 0),
    PRIMARY KEY (program_id, kind, name),
    CHECK (kind = 'stock' OR allocated <= total)
);

-- Codes, never in clear: a Fernet token, and an HMAC of the code for de-duplication.
-- A code belongs to at most one (order, unit); voided codes are never reissued.
CREATE TABLE codes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program_id   text        NOT NULL,
    pool         text        NOT NULL,
    fingerprint  bytea       NOT NULL CHECK (length(fingerprint) = 32),
    ciphertext   bytea       NOT NULL,
    status       text        NOT NULL DEFAULT 'available'
                 CHECK (status IN ('available', 'allocated', 'delivered', 'voided')),
    order_id     text,
    unit         integer CHECK (unit >= 1),
    import_id    text        NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (program_id, pool, fingerprint),
    UNIQUE (order_id, unit),
    CHECK ((status = 'available') = (order_id IS NULL)),
    CHECK ((order_id IS NULL) = (unit IS NULL))
);
CREATE INDEX codes_available ON codes (program_id, pool, id) WHERE status = 'available';

-- The saga. `state` is internal (rewards.domain.saga.State); `status` is the public one.
CREATE TABLE orders (
    order_id          text        PRIMARY KEY,
    program_id        text        NOT NULL,
    member_id         text,
    identifiers       text[]      NOT NULL,          -- normalised 'kind:value'
    reward_id         text        NOT NULL,
    reward_name       text        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('code', 'physical')),
    inventory         text,                          -- the pool, or the reward id (stock)
    quantity          integer     NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    points            bigint      NOT NULL CHECK (points >= 0),
    state             text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('requested', 'points_reserved',
                                  'fulfilled', 'rejected', 'failed', 'cancelled')),
    outcome           text,
    reason_code       text,
    reason            text,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    delivery_channel  text        CHECK (delivery_channel IN ('sms', 'email')),
    locale            text,
    requested_at      timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deadline_at       timestamptz,                   -- when the waiting step times out
    attempts          integer     NOT NULL DEFAULT 0,
    commands          jsonb       NOT NULL DEFAULT '{}' -- each step's ledger command, as sent
);
CREATE INDEX orders_waiting ON orders (deadline_at)
    WHERE state IN ('identifying', 'reserving', 'capturing', 'releasing', 'refunding');
CREATE INDEX orders_delivering ON orders (updated_at) WHERE state = 'delivering';
CREATE INDEX orders_identifying ON orders USING gin (identifiers) WHERE state = 'identifying';

-- Every public status change, oldest first (GET /v1/orders/{id}).
CREATE TABLE order_history (
    order_id     text        NOT NULL REFERENCES orders,
    seq          integer     NOT NULL,
    status       text        NOT NULL,
    reason_code  text,
    reason       text,
    at           timestamptz NOT NULL,
    PRIMARY KEY (order_id, seq)
);
