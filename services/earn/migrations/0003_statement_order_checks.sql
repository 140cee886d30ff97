-- An order names an existing member and program version, and an identifier an existing
-- member: checked once per statement, not once per row (the ledger's
-- 0004_statement_account_checks.sql says why; an order had two foreign keys, and a new
-- member's identifier took 21 us a row to insert with its own). Members and program versions
-- are permanent (`make_permanent`), so nothing can outrun the checks; the error is a
-- foreign_key_violation, as a foreign key's was.

SELECT make_permanent('members', 'member_id');
SELECT make_permanent('program_versions', 'program_id, version');

CREATE OR REPLACE FUNCTION rows_name_members() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    -- orders and identifiers both name their member by member_id.
    SELECT n.member_id INTO missing FROM inserted n
    WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = n.member_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% names no member (%)', TG_TABLE_NAME, missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION orders_name_program_versions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing record;
BEGIN
    SELECT n.order_id, n.program_id, n.program_version INTO missing FROM inserted n
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
CREATE TRIGGER orders_name_members AFTER INSERT ON orders
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION rows_name_members();
CREATE TRIGGER orders_name_program_versions AFTER INSERT ON orders
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION orders_name_program_versions();
-- Fires only for an UPDATE that names these columns: returns update the amounts only.
CREATE TRIGGER orders_owner_fixed BEFORE UPDATE OF member_id, program_id, program_version
    ON orders FOR EACH ROW EXECUTE FUNCTION refuse_change();

ALTER TABLE identifiers DROP CONSTRAINT identifiers_member_id_fkey;
CREATE TRIGGER identifiers_name_members AFTER INSERT ON identifiers
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION rows_name_members();
-- An identifier points at one member, never moved silently: no UPDATE names its member.
CREATE TRIGGER identifiers_member_fixed BEFORE UPDATE OF member_id ON identifiers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
