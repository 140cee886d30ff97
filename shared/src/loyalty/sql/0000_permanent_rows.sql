-- Rows that others rely on staying as they are: a service's migration makes a table's rows
-- permanent where they are referenced through a statement-level check rather than a foreign
-- key (see the ledger's 0004_statement_account_checks.sql), so nothing can outrun the check.

-- BEFORE DELETE, UPDATE OF <key columns> (FOR EACH ROW) or TRUNCATE: refused.
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% of % rows is refused: other rows rely on them staying as they are',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

-- `table`'s rows can be neither deleted nor truncated, nor can `key_columns` (comma-separated)
-- change: two triggers, <table>_permanent and <table>_not_truncated.
CREATE OR REPLACE FUNCTION make_permanent(target text, key_columns text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER %I BEFORE DELETE OR UPDATE OF %s ON %I'
                   ' FOR EACH ROW EXECUTE FUNCTION refuse_change()',
                   target || '_permanent',
                   (SELECT string_agg(quote_ident(trim(c)), ', ')
                    FROM unnest(string_to_array(key_columns, ',')) AS c),
                   target);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()',
                   target || '_not_truncated', target);
END $$;
