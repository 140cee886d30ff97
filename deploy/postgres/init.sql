-- Roles and schemas of the loyalty platform: one login role and one schema per service.
-- Mirrors `loyalty.db.provision_service`, which `make run` / `loyalty up` and the tests run with
-- an admin DSN; in docker-compose.yml the postgres image runs this file once, as the superuser,
-- in the `loyalty` database, when its data volume is first initialised. Idempotent, so a DBA
-- can also run it by hand against an existing server:
--   psql -U postgres -d loyalty -f deploy/postgres/init.sql
--
-- The passwords are 'loyalty' (the same default as provision_service). CHANGE THEM IN
-- PRODUCTION, e.g. `ALTER ROLE loyalty_earn PASSWORD '...'`, and put the new secret into that
-- service's LOYALTY_<SERVICE>_PG_DSN.
--
-- A service never reads another's schema: each role owns its schema, PUBLIC gets nothing on
-- it, and nobody may create tables in `public`. Each service applies its own migrations at
-- start, as its own role, so no role needs more than its schema.

\set ON_ERROR_STOP on

DO $$
DECLARE
    service text;
    role text;
BEGIN
    FOREACH service IN ARRAY ARRAY['earn', 'ledger', 'expiry', 'rewards'] LOOP
        role := 'loyalty_' || service;
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
            EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', role, 'loyalty');
        END IF;
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', service, role);
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', service);
        EXECUTE format('ALTER ROLE %I SET search_path = %I', role, service);
    END LOOP;
END
$$;

-- PostgreSQL 15+ already defaults to this; stated for older servers and for clarity.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
