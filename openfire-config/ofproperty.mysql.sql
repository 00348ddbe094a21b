-- Openfire system properties for ofnotify's component connection (MySQL / MariaDB).
--
-- STOP OPENFIRE FIRST. Openfire reads its properties once and caches them: rows changed
-- under a running Openfire are not seen, and are overwritten when it next saves one of
-- them. Then, as the account Openfire uses (or an administrator):
--
--   mysql openfire --init-command="SET @secret = '$OFNOTIFY_SECRET'" < openfire-config/ofproperty.mysql.sql
--
-- The mysql client has no variables of its own, so the secret travels as a session
-- variable set by --init-command: it is written down in one place (the environment
-- ofnotify also reads), not in this file. It must not contain ' or \ (a hex secret,
-- e.g. `openssl rand -hex 32`, never does), and it is visible to `ps` while the
-- command runs: run it on a machine where that does not matter.
-- Optional, the same way: SET @port = '5275', @permission = 'blacklist' (or 'whitelist').
-- Running the script again updates the rows (REPLACE INTO).
--
-- Every value is checked the same way: an invalid or missing one becomes NULL, and a
-- single-row insert of NULL into ofProperty.propValue fails with
-- "Column 'propValue' cannot be null" whatever the sql_mode; mysql then stops, the
-- transaction is not committed, nothing is changed.

SET @port = COALESCE(@port, '5275');
SET @permission = COALESCE(@permission, 'blacklist');

START TRANSACTION;

-- xmpp.component.defaultSecret   the secret of components without a secret of their own
REPLACE INTO ofProperty (name, propValue, encrypted, iv)
  VALUES ('xmpp.component.defaultSecret', NULLIF(@secret, ''), 0, NULL);
-- xmpp.component.socket.port     the external component listener's TCP port (plaintext)
REPLACE INTO ofProperty (name, propValue, encrypted, iv)
  VALUES ('xmpp.component.socket.port',
          IF(@port REGEXP '^[0-9]{1,5}$' AND CAST(@port AS UNSIGNED) BETWEEN 1 AND 65535,
             @port, NULL), 0, NULL);
-- xmpp.component.permission      blacklist: any subdomain may connect with the secret;
--                                whitelist: only components configured in the console.
--                                Openfire silently reads any other value as blacklist.
REPLACE INTO ofProperty (name, propValue, encrypted, iv)
  VALUES ('xmpp.component.permission',
          IF(@permission IN ('blacklist', 'whitelist'), @permission, NULL), 0, NULL);
-- xmpp.component.socket.active   switch the external component listener on
REPLACE INTO ofProperty (name, propValue, encrypted, iv)
  VALUES ('xmpp.component.socket.active', 'true', 0, NULL);

COMMIT;

SELECT name,
       IF(name = 'xmpp.component.defaultSecret', '(set)', propValue) AS value
FROM ofProperty
WHERE name LIKE 'xmpp.component.%'
ORDER BY name;
