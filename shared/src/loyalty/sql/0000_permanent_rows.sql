-- Rows that others rely on staying as they are: a service's migration puts this on a table
-- whose rows are referenced through a statement-level check rather than a foreign key (see
-- the ledger's 0004_statement_account_checks.sql), so that nothing can outrun the check.
-- BEFORE DELETE, UPDATE OF <key columns> (FOR EACH ROW) or TRUNCATE: refused.
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% of % rows is refused: other rows rely on them staying as they are',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;
