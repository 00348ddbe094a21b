#!/usr/bin/env bash
# Run once by the postgres image when its data volume is initialised (mounted into
# /docker-entrypoint-initdb.d/), as the cluster's superuser. Creates:
#   openfire     owner of database "openfire"; Openfire creates its own schema there
#                on its first start (autosetup), so nothing of Openfire's exists yet;
#   ofnotify     owner of database "ofnotify", ofnotify's own storage;
#   ofnotify_ro  the watcher's read-only login on database "openfire": SELECT on
#                ofOffline and ofPresence, and on ofUser's username, name and email
#                columns only (not the password columns), nothing else.
# Because Openfire's tables do not exist yet, ofnotify_ro cannot be granted anything
# on them now. An event trigger grants it at the moment Openfire creates each of the
# three tables (see openfire-config/README.md for why not ALTER DEFAULT PRIVILEGES).
#
# Passwords come from the container's environment (the compose file passes them from
# .env) and reach psql through \getenv, never through a command line or the SQL text.
#
# Outside the image (tests, a hand-made cluster) set PGHOST/PGPORT as for any psql.
#
# The body is a subshell: the image *sources* init scripts that lack the executable bit
# (a checkout may lose it), and our shell options and `exit` must not leak into its
# entrypoint. A failure still stops the initialisation (the entrypoint runs with -e).
(
set -euo pipefail

for var in OPENFIRE_DB_PASSWORD OFNOTIFY_DB_PASSWORD OFNOTIFY_RO_PASSWORD; do
  if [[ -z ${!var-} ]]; then
    echo "postgres-init: $var is not set (see deploy/env.example)" >&2
    exit 1
  fi
done

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv openfire_password OPENFIRE_DB_PASSWORD
\getenv ofnotify_password OFNOTIFY_DB_PASSWORD
\getenv readonly_password OFNOTIFY_RO_PASSWORD

CREATE ROLE openfire LOGIN PASSWORD :'openfire_password';
CREATE ROLE ofnotify LOGIN PASSWORD :'ofnotify_password';
CREATE ROLE ofnotify_ro LOGIN PASSWORD :'readonly_password';
-- Even a mistaken write from the watcher fails.
ALTER ROLE ofnotify_ro SET default_transaction_read_only = on;

-- Owning its database gives each role CREATE on that database's public schema
-- (PostgreSQL 15 took it away from everybody else).
CREATE DATABASE openfire OWNER openfire ENCODING 'UTF8';
CREATE DATABASE ofnotify OWNER ofnotify ENCODING 'UTF8';
REVOKE ALL ON DATABASE openfire FROM PUBLIC;
REVOKE ALL ON DATABASE ofnotify FROM PUBLIC;
GRANT CONNECT ON DATABASE openfire TO ofnotify_ro;

\connect openfire
GRANT USAGE ON SCHEMA public TO ofnotify_ro;

-- Runs as whoever creates the table (Openfire's role, the table's owner, which may
-- grant on it). Matches by table name in any schema: Openfire creates them unquoted,
-- so PostgreSQL stores the names in lower case.
CREATE FUNCTION ofnotify_grant_readonly() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  created record;
BEGIN
  FOR created IN
    SELECT c.oid::regclass AS tbl, c.relname
    FROM pg_event_trigger_ddl_commands() AS cmd
    JOIN pg_class AS c ON c.oid = cmd.objid
    WHERE cmd.object_type = 'table' AND c.relname IN ('ofoffline', 'ofpresence', 'ofuser')
  LOOP
    IF created.relname = 'ofuser' THEN
      EXECUTE format('GRANT SELECT (username, name, email) ON %s TO ofnotify_ro', created.tbl);
    ELSE
      EXECUTE format('GRANT SELECT ON %s TO ofnotify_ro', created.tbl);
    END IF;
  END LOOP;
END
$fn$;

CREATE EVENT TRIGGER ofnotify_grant_readonly ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION ofnotify_grant_readonly();
SQL

echo "postgres-init: databases openfire and ofnotify, roles openfire, ofnotify, ofnotify_ro ready" >&2
)
