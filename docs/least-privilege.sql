-- Least privilege for fuseline on PostgreSQL: an owner role migrates, a runtime role works.
--
-- The owner role (the one that ran `fuseline db upgrade` and so owns the fuseline_* tables)
-- runs this file in the fuseline database, naming the runtime role that workers, `submit`
-- and the other commands use:
--
--   psql "postgresql://fuseline_owner@db.example.com/app" \
--        -v runtime_role=fuseline_worker -f docs/least-privilege.sql
--
-- Create the runtime role first (CREATE ROLE fuseline_worker LOGIN PASSWORD '...'). Run this
-- file again after every `fuseline db upgrade`, since a migration may add tables or sequences.
-- It grants exactly this and nothing else:
--
--   * CONNECT on the database, USAGE on schema public;
--   * SELECT, INSERT, UPDATE, DELETE on the fuseline_* tables (no TRUNCATE, REFERENCES, TRIGGER),
--     fuseline_tokens and fuseline_server_secrets included: `fuseline server` reads the tokens
--     on every request and creates its session secret once, and `fuseline tokens` writes them;
--   * SELECT only on fuseline_alembic_version (the broker checks the schema version at start-up);
--   * USAGE and SELECT on the fuseline_* sequences (the ids of steps, events and rate-limited starts).
--
-- The runtime role can then neither CREATE, ALTER nor DROP anything: PUBLIC loses CREATE on
-- schema public (already the default since PostgreSQL 15) and every default privilege on the
-- database (CONNECT, TEMPORARY). fuseline needs no extension, no superuser and no CREATE at run
-- time: LISTEN/NOTIFY and advisory locks need no privilege.

\set ON_ERROR_STOP on

REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

GRANT CONNECT ON DATABASE :"DBNAME" TO :"runtime_role";
GRANT USAGE ON SCHEMA public TO :"runtime_role";

-- Data, never definitions: every fuseline table but the version table ...
SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.%I TO %I', tablename, :'runtime_role')
  FROM pg_tables
 WHERE schemaname = 'public' AND tablename LIKE 'fuseline\_%' AND tablename <> 'fuseline_alembic_version'
 ORDER BY tablename
\gexec

-- ... which is only read.
GRANT SELECT ON TABLE public.fuseline_alembic_version TO :"runtime_role";

-- The sequences behind the ids of steps, events and rate-limited starts.
SELECT format('GRANT USAGE, SELECT ON SEQUENCE public.%I TO %I', sequencename, :'runtime_role')
  FROM pg_sequences
 WHERE schemaname = 'public' AND sequencename LIKE 'fuseline\_%'
 ORDER BY sequencename
\gexec
