-- The expiry scheduler's own view of the world, kept from events (it never reads another
-- service's schema): programs (loyalty.programs.v1), members' contact data
-- (loyalty.members.v1), lots and activity (loyalty.ledger.v1); plus what it decided.

-- The latest definition of each program (the topic is compacted: the latest value wins).
CREATE TABLE programs (
    program_id            text PRIMARY KEY,
    name                  text NOT NULL,
    time_zone             text NOT NULL,
    default_locale        text NOT NULL,
    policy                text NOT NULL CHECK (policy IN ('none', 'rolling', 'fixed', 'inactivity')),
    inactivity_months     int  CHECK (inactivity_months >= 1),
    warn_days_before      int[] NOT NULL,
    redemption_closes_at  timestamptz,
    definition            jsonb NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- One row per member seen on either topic. Contact data comes from loyalty.members.v1
-- (phone and e-mail from `identifiers`, `locale`, `channel`); the rest from loyalty.ledger.v1.
CREATE TABLE members (
    program_id         text NOT NULL,
    member_id          text NOT NULL,
    locale             text,
    channel            text,
    phone              text,
    email              text,
    balance            bigint NOT NULL DEFAULT 0,   -- balance_after of the newest movement
    last_activity_at   timestamptz,                 -- newest earning or spending (the watermark)
    inactivity_due_at  timestamptz,                 -- inactivity programs: when everything expires
    PRIMARY KEY (program_id, member_id)
);
CREATE INDEX members_inactivity_due ON members (inactivity_due_at)
    WHERE inactivity_due_at IS NOT NULL;
CREATE INDEX members_holding ON members (program_id) WHERE balance > 0;

-- Identifier -> member, for the `{ref}` of the HTTP routes.
CREATE TABLE identifiers (
    program_id  text NOT NULL,
    kind        text NOT NULL,
    value       text NOT NULL,
    member_id   text NOT NULL,
    PRIMARY KEY (program_id, kind, value)
);

-- Each lot the ledger created, with its remaining points (kept from the `lots` moves every
-- ledger event carries) and its own expiry (NULL: never, or the program's inactivity rule).
CREATE TABLE lots (
    lot_id              bigint PRIMARY KEY,          -- the ledger's lot id
    program_id          text   NOT NULL,
    member_id           text   NOT NULL,
    points              bigint NOT NULL CHECK (points > 0),
    remaining           bigint NOT NULL CHECK (remaining >= 0),
    earned_at           timestamptz NOT NULL,
    expires_at          timestamptz,
    policy              text   NOT NULL,             -- the program's policy when it was earned
    -- An expire command naming this lot is on its way and not yet answered: not sent again.
    pending_command_id  text,
    -- Due, but the ledger kept points of it (they were held for a redemption): not asked
    -- again until the member's hold is released.
    held_back           boolean NOT NULL DEFAULT false,
    -- Support reversed our expiry of this lot: it is not expired again automatically.
    exempt              boolean NOT NULL DEFAULT false
);
CREATE INDEX lots_due ON lots (expires_at, lot_id)
    WHERE remaining > 0 AND pending_command_id IS NULL AND NOT held_back AND NOT exempt;
CREATE INDEX lots_member ON lots (program_id, member_id) WHERE remaining > 0;
CREATE INDEX lots_program_expiry ON lots (program_id, expires_at) WHERE remaining > 0;
CREATE INDEX lots_pending ON lots (pending_command_id) WHERE pending_command_id IS NOT NULL;

-- Every expire command the scheduler sent, and what the ledger answered.
CREATE TABLE expire_requests (
    command_id    text PRIMARY KEY,
    program_id    text NOT NULL,
    member_id     text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('expiry', 'inactivity', 'sunset')),
    lots          int  NOT NULL CHECK (lots > 0),
    points        bigint NOT NULL,                  -- what the scheduler expected to expire
    as_of         timestamptz NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    expired       bigint,                           -- what the ledger expired
    refusal       text,                             -- or its refusal code
    answered_at   timestamptz
);

-- Warnings and sunset notices: once per member, due instant (the end of the due day, so one
-- per due day) and threshold, however many sweeps, restarts or replicas there are. A
-- threshold overtaken by a later one in the same sweep (catch-up after downtime) is recorded
-- as `superseded`, so it is never sent late.
CREATE TABLE notices (
    program_id      text NOT NULL,
    member_id       text NOT NULL,
    template        text NOT NULL CHECK (template IN ('expiry_warning', 'program_closing')),
    due_at          timestamptz NOT NULL,
    threshold_days  int  NOT NULL CHECK (threshold_days >= 0),
    status          text NOT NULL CHECK (status IN ('sent', 'superseded', 'unreachable')),
    points          bigint NOT NULL,
    as_of           timestamptz NOT NULL,
    decided_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, member_id, template, due_at, threshold_days)
);

-- What `upcoming` shows for each lot with points left: when it expires, and under which rule.
-- A program's sunset ends every lot not due before its redemption deadline; under an
-- inactivity policy, the member's deadline; otherwise the lot's own expiry (NULL: never).
CREATE VIEW upcoming AS
SELECT l.program_id, l.member_id, l.lot_id, l.remaining AS points, e.expires_at, e.policy
FROM lots l
JOIN programs p USING (program_id)
LEFT JOIN members m USING (program_id, member_id)
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.policy = 'inactivity' THEN m.inactivity_due_at ELSE l.expires_at END
           AS own_expiry
) o
CROSS JOIN LATERAL (
    SELECT
        CASE WHEN p.redemption_closes_at IS NOT NULL
                  AND (o.own_expiry IS NULL OR o.own_expiry >= p.redemption_closes_at)
             THEN p.redemption_closes_at ELSE o.own_expiry END AS expires_at,
        CASE WHEN p.redemption_closes_at IS NOT NULL
                  AND (o.own_expiry IS NULL OR o.own_expiry >= p.redemption_closes_at)
             THEN 'sunset'
             WHEN p.policy = 'inactivity' THEN 'inactivity'
             WHEN l.expires_at IS NULL THEN 'none'
             ELSE l.policy END AS policy
) e
WHERE l.remaining > 0;
