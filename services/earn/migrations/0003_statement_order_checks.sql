-- An order names an existing member and program version, and an identifier an existing
-- member: checked once per statement, not once per row (see the ledger's
-- 0004_statement_account_checks.sql for the measurement: a foreign key's lookup and KEY SHARE
-- lock per row cost about a third of a bulk insert; an order had two, and a new member's
-- identifier took 21 us a row). Members and program versions are permanent instead (the triggers below
-- refuse a delete, a key change and TRUNCATE), so nothing can outrun the check. The error is a
-- foreign_key_violation, as a foreign key's was.

CREATE OR REPLACE FUNCTION rows_are_permanent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are permanent: % is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER members_permanent BEFORE DELETE OR UPDATE OF member_id ON members
    FOR EACH ROW EXECUTE FUNCTION rows_are_permanent();
CREATE TRIGGER members_not_truncated BEFORE TRUNCATE ON members
    FOR EACH STATEMENT EXECUTE FUNCTION rows_are_permanent();
CREATE TRIGGER program_versions_permanent
    BEFORE DELETE OR UPDATE OF program_id, version ON program_versions
    FOR EACH ROW EXECUTE FUNCTION rows_are_permanent();
CREATE TRIGGER program_versions_not_truncated BEFORE TRUNCATE ON program_versions
    FOR EACH STATEMENT EXECUTE FUNCTION rows_are_permanent();

CREATE OR REPLACE FUNCTION orders_name_members_and_versions() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing record;
BEGIN
    SELECT n.order_id, n.member_id INTO missing FROM new_orders n
    WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = n.member_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'order % names no member (%)', missing.order_id, missing.member_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.order_id, n.program_id, n.program_version INTO missing FROM new_orders n
    WHERE NOT EXISTS (SELECT 1 FROM program_versions v
                      WHERE v.program_id = n.program_id AND v.version = n.program_version)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'order % names no program version (%, %)', missing.order_id,
            missing.program_id, missing.program_version USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
ALTER TABLE orders DROP CONSTRAINT orders_member_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_program_id_program_version_fkey;
CREATE TRIGGER orders_name_members_and_versions AFTER INSERT ON orders
    REFERENCING NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_name_members_and_versions();

CREATE OR REPLACE FUNCTION order_owner_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an order''s member and program version never change (order %)',
        OLD.order_id USING ERRCODE = 'restrict_violation';
END $$;
-- Fires only for an UPDATE that names these columns: returns update the amounts only.
CREATE TRIGGER orders_owner_fixed BEFORE UPDATE OF member_id, program_id, program_version
    ON orders FOR EACH ROW EXECUTE FUNCTION order_owner_is_fixed();

CREATE OR REPLACE FUNCTION identifiers_name_members() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing record;
BEGIN
    SELECT n.kind, n.member_id INTO missing FROM new_identifiers n
    WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = n.member_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a % identifier names no member (%)', missing.kind, missing.member_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
ALTER TABLE identifiers DROP CONSTRAINT identifiers_member_id_fkey;
CREATE TRIGGER identifiers_name_members AFTER INSERT ON identifiers
    REFERENCING NEW TABLE AS new_identifiers
    FOR EACH STATEMENT EXECUTE FUNCTION identifiers_name_members();
-- An identifier points at one member, never moved silently: no UPDATE names its member.
CREATE TRIGGER identifiers_member_fixed BEFORE UPDATE OF member_id ON identifiers
    FOR EACH ROW EXECUTE FUNCTION rows_are_permanent();
