-- Openfire system properties for ofnotify's component connection (PostgreSQL).
--
-- STOP OPENFIRE FIRST. Openfire reads its properties once and caches them: rows changed
-- under a running Openfire are not seen, and are overwritten when it next saves one of
-- them. Then, as the role that owns Openfire's tables (or a superuser):
--
--   psql -d openfire -v secret="$OFNOTIFY_SECRET" -f openfire-config/ofproperty.sql
--
-- Optional variables: -v port=5275 (component listener port), -v permission=blacklist
-- (or whitelist), -v force=1 (skip the "is Openfire still connected?" check).
-- The secret is given as a psql variable so that it is written down in one place (the
-- environment ofnotify also reads), and psql quotes it, whatever characters it holds.
-- Running the script again updates the rows (INSERT ... ON CONFLICT).
\set ON_ERROR_STOP on

\if :{?secret}
\else
  -- Fails (non-zero exit status) rather than writing an empty secret.
  DO $$ BEGIN RAISE EXCEPTION
    'ofproperty.sql: no secret given; run: psql -d openfire -v secret="$OFNOTIFY_SECRET" -f ofproperty.sql';
  END $$;
\endif
\if :{?port}
\else
  \set port 5275
\endif
\if :{?permission}
\else
  \set permission blacklist
\endif

BEGIN;

-- The checks below are PL/pgSQL, which cannot see psql variables: hand them over as
-- settings local to this transaction.
SELECT set_config('ofnotify.port', :'port', true),
       set_config('ofnotify.permission', :'permission', true),
       set_config('ofnotify.secret_length', length(:'secret')::text, true) \g /dev/null

DO $$
BEGIN
  IF current_setting('ofnotify.secret_length')::int = 0 THEN
    RAISE EXCEPTION 'ofproperty.sql: the secret is empty';
  END IF;
  IF current_setting('ofnotify.port') !~ '^[0-9]{1,5}$'
     OR current_setting('ofnotify.port')::int NOT BETWEEN 1 AND 65535 THEN
    RAISE EXCEPTION 'ofproperty.sql: port must be a TCP port number, not %',
      current_setting('ofnotify.port');
  END IF;
  IF current_setting('ofnotify.permission') NOT IN ('blacklist', 'whitelist') THEN
    RAISE EXCEPTION 'ofproperty.sql: permission must be blacklist or whitelist, not % '
      '(Openfire silently reads anything else as blacklist)', current_setting('ofnotify.permission');
  END IF;
END $$;

\if :{?force}
\else
  -- Refuse while Openfire is connected: sessions of the role that owns ofProperty.
  DO $$
  DECLARE
    sessions int;
  BEGIN
    SELECT count(*) INTO sessions
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND pid <> pg_backend_pid()
      AND usename = (SELECT tableowner FROM pg_tables WHERE tablename = 'ofproperty' LIMIT 1);
    IF sessions > 0 THEN
      RAISE EXCEPTION 'ofproperty.sql: Openfire still has % connection(s) to this database: '
        'stop it first (or pass -v force=1 if they are not Openfire''s)', sessions;
    END IF;
  END $$;
\endif

-- xmpp.component.socket.active   switch the external component listener on
-- xmpp.component.socket.port     its TCP port (plaintext: keep it on a private network)
-- xmpp.component.defaultSecret   the secret of components without a secret of their own
-- xmpp.component.permission      blacklist: any subdomain may connect with the secret;
--                                whitelist: only components configured in the console
-- encrypted = 0, iv = NULL: stored in clear, as the admin console stores these.
INSERT INTO ofProperty (name, propValue, encrypted, iv) VALUES
  ('xmpp.component.socket.active', 'true', 0, NULL),
  ('xmpp.component.socket.port', :'port', 0, NULL),
  ('xmpp.component.defaultSecret', :'secret', 0, NULL),
  ('xmpp.component.permission', :'permission', 0, NULL)
ON CONFLICT (name) DO UPDATE
  SET propValue = EXCLUDED.propValue, encrypted = EXCLUDED.encrypted, iv = EXCLUDED.iv;

COMMIT;

SELECT name,
       CASE WHEN name = 'xmpp.component.defaultSecret' THEN '(set)' ELSE propValue END AS value
FROM ofProperty
WHERE name LIKE 'xmpp.component.%'
ORDER BY name;
