-- Entries and lots name an existing account: checked once per statement, not once per row.
--
-- A foreign key checks each inserted row with a lookup and a KEY SHARE lock of its own: about
-- 4 us of the 11 an entry took to insert, and a purchase writes two entries and a lot. The
-- trigger below checks a whole statement's rows with one anti-join (on batches of 666 entries
-- by COPY: 9.4 -> 6.8 us a row; a one-row statement costs what it did with the foreign key,
-- since its query is static and planned once per connection). The foreign key's lock guarded
-- the account against a concurrent delete or key change; accounts are permanent instead
-- (`make_permanent`, shared/src/loyalty/sql/0000_permanent_rows.sql), so nothing can outrun the
-- check. The error is a foreign_key_violation, as before: the batch is replayed a command per
-- savepoint.

SELECT make_permanent('accounts', 'program_id, account_id');

CREATE OR REPLACE FUNCTION rows_name_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing record;
BEGIN
    IF TG_TABLE_NAME = 'entries' THEN
        SELECT n.program_id, n.account_id INTO missing FROM inserted n
        WHERE NOT EXISTS (SELECT 1 FROM accounts a
                          WHERE a.program_id = n.program_id AND a.account_id = n.account_id)
        LIMIT 1;
    ELSE  -- lots
        SELECT n.program_id, n.member_id AS account_id INTO missing FROM inserted n
        WHERE NOT EXISTS (SELECT 1 FROM accounts a
                          WHERE a.program_id = n.program_id AND a.account_id = n.member_id)
        LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION '% names no account (program %, account %)', TG_TABLE_NAME,
            missing.program_id, missing.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

ALTER TABLE entries DROP CONSTRAINT entries_program_id_account_id_fkey;
-- Entries are immutable (entries_immutable), so only an insert can name an account.
CREATE TRIGGER entries_name_accounts AFTER INSERT ON entries
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION rows_name_accounts();

ALTER TABLE lots DROP CONSTRAINT lots_program_id_member_id_fkey;
CREATE TRIGGER lots_name_accounts AFTER INSERT ON lots
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION rows_name_accounts();
-- Fires only for an UPDATE that names these columns: the ledger's `SET remaining` does not.
CREATE TRIGGER lots_owner_fixed BEFORE UPDATE OF program_id, member_id ON lots
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
