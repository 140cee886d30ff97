-- Wakes the service's active outbox relay as soon as a transaction that added outbox rows
-- commits, whichever replica or code path wrote them (a consumer, an HTTP route, a job): the
-- relay LISTENs on this channel, so it polls only as a safety net (LOYALTY_OUTBOX_POLL_INTERVAL_MS).
-- One notification per statement, and Postgres folds a transaction's identical ones into one.
CREATE FUNCTION outbox_wakeup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('loyalty_outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_wakeup AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_wakeup();
