-- The ledger: accounts (members and the program's own), immutable entries, lots.
-- Constraints here back the invariants of INVARIANTS.md; the code never relies on itself alone.

CREATE TABLE accounts (
    program_id  text   NOT NULL,
    account_id  text   NOT NULL,            -- a member_id, or '@issued', '@redeemed', ...
    kind        text   NOT NULL CHECK (kind IN ('member', 'issued', 'redeemed', 'expired',
                                                'adjusted')),
    balance     bigint NOT NULL DEFAULT 0,
    reserved    bigint NOT NULL DEFAULT 0,
    owed        bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, account_id),
    -- Program accounts keep no running balance here (see entries.balance_after).
    CONSTRAINT program_rows_static CHECK (kind = 'member' OR (balance = 0 AND reserved = 0 AND owed = 0)),
    -- A member's available points (balance - reserved) never go below zero.
    CONSTRAINT member_not_negative CHECK (
        kind <> 'member' OR (balance >= 0 AND reserved >= 0 AND reserved <= balance AND owed >= 0))
);

-- Every movement, immutable: a member entry and its program counter-entry sum to zero.
CREATE TABLE entries (
    entry_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program_id     text   NOT NULL,
    account_id     text   NOT NULL,
    command_id     text   NOT NULL,
    type           text   NOT NULL,
    points         bigint NOT NULL,
    -- NULL for the program's own accounts: their balance is the sum of their entries, so the
    -- hot '@issued' row is never locked per movement.
    balance_after  bigint,
    reason         text   NOT NULL,
    source_kind    text   NOT NULL,
    source_id      text   NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (program_id, account_id) REFERENCES accounts (program_id, account_id),
    UNIQUE (command_id, account_id, type)
);
CREATE INDEX entries_account ON entries (program_id, account_id, entry_id DESC);

CREATE OR REPLACE FUNCTION entries_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are immutable (% on entry %)', TG_OP, OLD.entry_id;
END $$;
CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION entries_are_immutable();

-- Each credit is a lot with its own expiry (NULL: never).
CREATE TABLE lots (
    lot_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program_id  text   NOT NULL,
    member_id   text   NOT NULL,
    command_id  text   NOT NULL UNIQUE,
    points      bigint NOT NULL CHECK (points > 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0 AND remaining <= points),
    earned_at   timestamptz NOT NULL,
    expires_at  timestamptz,
    FOREIGN KEY (program_id, member_id) REFERENCES accounts (program_id, account_id)
);
CREATE INDEX lots_open ON lots (program_id, member_id, expires_at NULLS LAST, lot_id)
    WHERE remaining > 0;

-- The ledger's own copy of member identifiers, from loyalty.members.v1 (for `{ref}` lookups).
CREATE TABLE identifiers (
    program_id  text NOT NULL,
    kind        text NOT NULL,
    value       text NOT NULL,
    member_id   text NOT NULL,
    PRIMARY KEY (program_id, kind, value)
);
