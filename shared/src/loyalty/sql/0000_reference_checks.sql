-- References checked once per statement, for the hot tables whose per-row foreign keys cost
-- too much (see each service's migration that uses them), and rows made permanent so that
-- nothing can outrun such a check.
--
-- A foreign key checks each inserted row with a lookup and a KEY SHARE lock of its own: about
-- 4 us of the 11 a ledger entry took to insert. `rows_reference` checks a whole statement's
-- rows with one anti-join (measured on batches of 666 entries by COPY: 9.4 -> 6.8 us a row).
-- The foreign key's lock guarded the referenced row against a concurrent delete or key change;
-- `refuse_change` on the referenced table refuses both (and TRUNCATE) instead.

-- AFTER INSERT ... REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT, with arguments: the
-- referenced table, the inserted rows' columns and the referenced columns (comma-separated,
-- in the same order). Raises foreign_key_violation, as a foreign key would.
CREATE OR REPLACE FUNCTION rows_reference() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parent text := TG_ARGV[0];
    here text[] := string_to_array(TG_ARGV[1], ',');
    there text[] := string_to_array(TG_ARGV[2], ',');
    missing text;
BEGIN
    EXECUTE format(
        'SELECT concat_ws('', '', %s) FROM inserted n'
        ' WHERE NOT EXISTS (SELECT 1 FROM %I p WHERE %s) LIMIT 1',
        (SELECT string_agg(format('n.%I', c), ', ') FROM unnest(here) AS c),
        parent,
        (SELECT string_agg(format('p.%I = n.%I', there[i], here[i]), ' AND ')
         FROM generate_subscripts(here, 1) AS i))
        INTO missing;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION '% names no % row (%: %)', TG_TABLE_NAME, parent,
            array_to_string(here, ', '), missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

-- BEFORE DELETE, UPDATE OF <key columns> (FOR EACH ROW) or TRUNCATE: refused.
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% of % rows is refused: other rows rely on them staying as they are',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;
