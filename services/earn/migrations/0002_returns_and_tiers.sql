-- Returns of orders (each reverses part of what the order earned) and members' tiers.

CREATE TABLE returns (
    event_id     text PRIMARY KEY,
    program_id   text NOT NULL,
    order_id     text NOT NULL,
    amount       numeric(18, 4) NOT NULL CHECK (amount >= 0),
    points       integer NOT NULL CHECK (points >= 0),
    occurred_at  timestamptz NOT NULL,
    FOREIGN KEY (program_id, order_id) REFERENCES orders (program_id, order_id)
);

-- Points from activities and adjustments also count toward tiers (last 12 months).
CREATE TABLE awards (
    event_id     text PRIMARY KEY,
    program_id   text NOT NULL,
    member_id    text NOT NULL REFERENCES members (member_id),
    kind         text NOT NULL CHECK (kind IN ('activity', 'adjustment')),
    points       integer NOT NULL,
    reason       text NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX awards_member_recent ON awards (member_id, occurred_at);

ALTER TABLE members ADD COLUMN tier_id text;
CREATE UNIQUE INDEX orders_event ON orders (event_id);
