-- Entries and lots name an existing account: checked once per statement, not once per row
-- (`rows_reference`, shared/src/loyalty/sql/0000_reference_checks.sql, says why). Accounts are
-- permanent, so nothing can outrun the check; the error is a foreign_key_violation, as before,
-- and the batch is replayed a command per savepoint.

CREATE TRIGGER accounts_permanent BEFORE DELETE OR UPDATE OF program_id, account_id ON accounts
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER accounts_not_truncated BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

ALTER TABLE entries DROP CONSTRAINT entries_program_id_account_id_fkey;
-- Entries are immutable (entries_immutable), so only an insert can name an account.
CREATE TRIGGER entries_name_accounts AFTER INSERT ON entries
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION rows_reference('accounts', 'program_id,account_id', 'program_id,account_id');

ALTER TABLE lots DROP CONSTRAINT lots_program_id_member_id_fkey;
CREATE TRIGGER lots_name_accounts AFTER INSERT ON lots
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION rows_reference('accounts', 'program_id,member_id', 'program_id,account_id');
-- Fires only for an UPDATE that names these columns: the ledger's `SET remaining` does not.
CREATE TRIGGER lots_owner_fixed BEFORE UPDATE OF program_id, member_id ON lots
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
