-- Holds (two-phase spending) and the record of which lots each movement used.

-- A reservation of points: active until captured, released, or timed out.
CREATE TABLE holds (
    hold_id     text   PRIMARY KEY,              -- the reserve command's id
    program_id  text   NOT NULL,
    member_id   text   NOT NULL,
    points      bigint NOT NULL CHECK (points > 0),
    status      text   NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    settled_at  timestamptz,
    settled_by  text,                            -- the capture/release command, or 'timeout'
    reason      text   NOT NULL,
    source_kind text   NOT NULL,
    source_id   text   NOT NULL,
    CHECK ((status = 'active') = (settled_at IS NULL)),
    FOREIGN KEY (program_id, member_id) REFERENCES accounts (program_id, account_id)
);
CREATE INDEX holds_active ON holds (expires_at) WHERE status = 'active';
CREATE INDEX holds_member ON holds (program_id, member_id) WHERE status = 'active';

-- Every change to a lot's remaining points, signed: positive = taken (debit, capture,
-- expiry), negative = given back (a reversal restores exactly the lots a debit used).
-- For each lot: points - remaining = sum(lot_moves.points).
CREATE TABLE lot_moves (
    seq         bigint GENERATED ALWAYS AS IDENTITY,  -- the order a command took its lots in
    command_id  text   NOT NULL,
    lot_id      bigint NOT NULL REFERENCES lots (lot_id),
    points      bigint NOT NULL CHECK (points <> 0),
    PRIMARY KEY (command_id, lot_id)
);
CREATE INDEX lot_moves_lot ON lot_moves (lot_id);

-- What each applied command did, so `reverse` knows exactly what to undo (and only once).
CREATE TABLE movements (
    command_id     text   PRIMARY KEY,
    program_id     text   NOT NULL,
    member_id      text   NOT NULL,
    type           text   NOT NULL,              -- credit, debit, capture, expire, reverse, ...
    points         bigint NOT NULL,              -- what moved from the member (signed: + credit)
    owed           bigint NOT NULL DEFAULT 0,    -- recorded as owed instead of taken
    reversed       bigint NOT NULL DEFAULT 0 CHECK (reversed >= 0),
    counter_account text  NOT NULL,              -- the program account on the other side
    lot_id         bigint,                       -- the lot a credit created
    occurred_at    timestamptz NOT NULL,
    CHECK (reversed <= abs(points) + owed)
);
