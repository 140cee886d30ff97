-- An entry is a transfer: one row holds both sides of the double entry. `account_id` is the
-- member's account (its `points` signed from the member's side, its `balance_after`) and
-- `counter_account` the program account that takes `-points` (`@issued`, `@redeemed`,
-- `@expired`, `@adjusted`). Before, each movement wrote two rows, the program's with a NULL
-- balance_after; the program's row carried nothing the member's did not, and writing it cost
-- as much (a purchase's 57 -> 26 us of entry inserts, measured by COPY of 666 movements).
-- A program account's balance is now minus the sum of the points of the entries naming it as
-- their counter account, as it was the sum of its own rows.

ALTER TABLE entries ADD COLUMN counter_account text;

-- Fold each program-side row into its member-side row (the same command and type: a command
-- moves one member's points, and writes one transfer per type), then drop it.
ALTER TABLE entries DISABLE TRIGGER entries_immutable;
UPDATE entries m SET counter_account = c.account_id
FROM entries c
WHERE c.program_id = m.program_id AND c.command_id = m.command_id AND c.type = m.type
  AND c.balance_after IS NULL AND m.balance_after IS NOT NULL AND c.points = -m.points;
DELETE FROM entries WHERE balance_after IS NULL;
ALTER TABLE entries ENABLE TRIGGER entries_immutable;

-- A member-side row left without its counterpart (a ledger broken before this migration)
-- fails the migration here rather than being carried over unbalanced.
ALTER TABLE entries ALTER COLUMN counter_account SET NOT NULL,
                    ALTER COLUMN balance_after SET NOT NULL,
                    ADD CONSTRAINT entries_sides_differ CHECK (counter_account <> account_id);
-- One transfer per command and type (a credit that pays back owed points writes a credited
-- and a debited one); the account is implied, as a command moves one member's points.
ALTER TABLE entries DROP CONSTRAINT entries_command_id_account_id_type_key,
                    ADD CONSTRAINT entries_command_type UNIQUE (command_id, type);

-- Both sides name an existing account; the counter account is a program's.
CREATE OR REPLACE FUNCTION rows_name_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing record;
BEGIN
    IF TG_TABLE_NAME = 'entries' THEN
        -- As in 0004. A program account on the member's side exists too, but no movement can
        -- go there: its balance would change, which `program_rows_static` refuses.
        SELECT n.program_id, n.account_id INTO missing FROM inserted n
        WHERE NOT EXISTS (SELECT 1 FROM accounts a
                          WHERE a.program_id = n.program_id AND a.account_id = n.account_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'entries names no account (program %, account %)',
                missing.program_id, missing.account_id USING ERRCODE = 'foreign_key_violation';
        END IF;
        -- A batch names a handful of program accounts: each is looked up by its whole key. (An
        -- anti-join that also filtered on `kind` was planned as a scan of the accounts per
        -- inserted row while their statistics were young: 400 ms a statement.)
        FOR missing IN SELECT DISTINCT n.program_id, n.counter_account AS account_id
                       FROM inserted n LOOP
            PERFORM FROM accounts a
            WHERE a.program_id = missing.program_id AND a.account_id = missing.account_id
              AND a.kind <> 'member';
            IF NOT FOUND THEN
                RAISE EXCEPTION 'entries names no program account (program %, account %)',
                    missing.program_id, missing.account_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
        END LOOP;
    ELSE  -- lots
        SELECT n.program_id, n.member_id AS account_id INTO missing FROM inserted n
        WHERE NOT EXISTS (SELECT 1 FROM accounts a
                          WHERE a.program_id = n.program_id AND a.account_id = n.member_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'lots names no account (program %, account %)',
                missing.program_id, missing.account_id USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;
