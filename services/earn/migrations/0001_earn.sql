-- earn: programs as applied, members and their identifiers, and what each order earned.

-- Every version of a program definition earn has applied; orders point at the one they used.
CREATE TABLE program_versions (
    program_id    text    NOT NULL,
    version       integer NOT NULL CHECK (version > 0),
    content_hash  text    NOT NULL,
    definition    jsonb   NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, version)
);

CREATE TABLE programs (
    program_id  text    PRIMARY KEY,
    version     integer NOT NULL,
    FOREIGN KEY (program_id, version) REFERENCES program_versions (program_id, version)
);

CREATE TABLE members (
    member_id          text PRIMARY KEY,
    program_id         text NOT NULL,
    locale             text NOT NULL,
    preferred_channel  text CHECK (preferred_channel IN ('sms', 'email')),
    phone              text,
    email              text,
    enrolled_at        timestamptz NOT NULL
);

-- One identifier points at one member of a program; never merged silently.
CREATE TABLE identifiers (
    program_id  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('customer', 'card', 'phone', 'email')),
    value       text NOT NULL,
    member_id   text NOT NULL REFERENCES members (member_id),
    linked_at   timestamptz NOT NULL,
    PRIMARY KEY (program_id, kind, value)
);
CREATE INDEX identifiers_member ON identifiers (member_id);

-- What each order earned, under which rule version: returns reverse exactly that.
CREATE TABLE orders (
    program_id        text    NOT NULL,
    order_id          text    NOT NULL,
    event_id          text    NOT NULL,
    member_id         text    NOT NULL REFERENCES members (member_id),
    program_version   integer NOT NULL,
    channel           text    NOT NULL,
    currency          text    NOT NULL,
    total             numeric(18, 4) NOT NULL CHECK (total >= 0),
    points            integer NOT NULL CHECK (points >= 0),
    breakdown         jsonb   NOT NULL,
    returned_amount   numeric(18, 4) NOT NULL DEFAULT 0 CHECK (returned_amount >= 0),
    points_reversed   integer NOT NULL DEFAULT 0 CHECK (points_reversed BETWEEN 0 AND points),
    occurred_at       timestamptz NOT NULL,
    PRIMARY KEY (program_id, order_id),
    FOREIGN KEY (program_id, program_version) REFERENCES program_versions (program_id, version)
);
CREATE INDEX orders_member_recent ON orders (member_id, occurred_at);

-- Valid input that earned nothing, and why (earning closed, enrolment closed, below minimum).
CREATE TABLE skipped (
    event_id     text PRIMARY KEY,
    program_id   text NOT NULL,
    reason_code  text NOT NULL,
    reason       text NOT NULL,
    occurred_at  timestamptz NOT NULL
);
