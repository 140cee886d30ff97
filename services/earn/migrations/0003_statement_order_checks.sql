-- An order names an existing member and program version, and an identifier an existing
-- member: checked once per statement, not once per row (`rows_reference`,
-- shared/src/loyalty/sql/0000_reference_checks.sql, says why; an order had two foreign keys,
-- and a new member's identifier took 21 us a row to insert with its own). Members and program
-- versions are permanent, so nothing can outrun the checks; the error is a
-- foreign_key_violation, as a foreign key's was.

CREATE TRIGGER members_permanent BEFORE DELETE OR UPDATE OF member_id ON members
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER members_not_truncated BEFORE TRUNCATE ON members
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER program_versions_permanent
    BEFORE DELETE OR UPDATE OF program_id, version ON program_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER program_versions_not_truncated BEFORE TRUNCATE ON program_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

ALTER TABLE orders DROP CONSTRAINT orders_member_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_program_id_program_version_fkey;
CREATE TRIGGER orders_name_members AFTER INSERT ON orders
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION rows_reference('members', 'member_id', 'member_id');
CREATE TRIGGER orders_name_program_versions AFTER INSERT ON orders
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION rows_reference('program_versions', 'program_id,program_version',
                                    'program_id,version');
-- Fires only for an UPDATE that names these columns: returns update the amounts only.
CREATE TRIGGER orders_owner_fixed BEFORE UPDATE OF member_id, program_id, program_version
    ON orders FOR EACH ROW EXECUTE FUNCTION refuse_change();

ALTER TABLE identifiers DROP CONSTRAINT identifiers_member_id_fkey;
CREATE TRIGGER identifiers_name_members AFTER INSERT ON identifiers
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION rows_reference('members', 'member_id', 'member_id');
-- An identifier points at one member, never moved silently: no UPDATE names its member.
CREATE TRIGGER identifiers_member_fixed BEFORE UPDATE OF member_id ON identifiers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
