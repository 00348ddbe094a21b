-- A read-only login for ofnotify's Openfire watcher (PostgreSQL), on an Openfire whose
-- tables exist already. Run as a superuser (or a role with CREATEROLE that may grant on
-- Openfire's tables), connected to Openfire's database:
--
--   psql -d openfire -v password="$OFNOTIFY_RO_PASSWORD" -f openfire-config/readonly-account.postgresql.sql
--
-- What ofnotify reads, and so all that is granted:
--   ofOffline   stored offline messages (new rows = messages, vanished rows = delivered)
--   ofPresence  who is offline (a row per logged-out user)
--   ofUser      username, name, email only: not the password columns
-- Not granted: ofProperty (it holds xmpp.component.defaultSecret) and everything else.
-- Safe to run again (after an Openfire upgrade, or to change the password).
\set ON_ERROR_STOP on

\if :{?password}
\else
  DO $$ BEGIN RAISE EXCEPTION
    'readonly-account.postgresql.sql: run with -v password="$OFNOTIFY_RO_PASSWORD"';
  END $$;
\endif

SELECT 'CREATE ROLE ofnotify_ro'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ofnotify_ro') \gexec
ALTER ROLE ofnotify_ro WITH LOGIN PASSWORD :'password';
-- Even a mistaken write from the watcher fails.
ALTER ROLE ofnotify_ro SET default_transaction_read_only = on;

SELECT format('GRANT CONNECT ON DATABASE %I TO ofnotify_ro', current_database()) \gexec
SELECT format('GRANT USAGE ON SCHEMA %I TO ofnotify_ro', schemaname)
FROM pg_tables WHERE tablename = 'ofoffline' \gexec

GRANT SELECT ON ofOffline, ofPresence TO ofnotify_ro;
GRANT SELECT (username, name, email) ON ofUser TO ofnotify_ro;
