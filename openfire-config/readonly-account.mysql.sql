-- A read-only login for ofnotify's Openfire watcher (MySQL 8 / MariaDB 10.4+). Run as an
-- administrator, with Openfire's database as the current one:
--
--   mysql openfire --init-command="SET @password = '$OFNOTIFY_RO_PASSWORD'" < openfire-config/readonly-account.mysql.sql
--
-- (The password must not contain ' or \; it is visible to `ps` while the command runs.)
-- What ofnotify reads, and so all that is granted:
--   ofOffline   stored offline messages (new rows = messages, vanished rows = delivered)
--   ofPresence  who is offline (a row per logged-out user)
--   ofUser      username, name, email only: not the password columns
-- Not granted: ofProperty (it holds xmpp.component.defaultSecret) and everything else.
-- The account may log in from any host ('%'): narrow it to ofnotify's address if you can.
-- Safe to run again (after an Openfire upgrade, or to change the password).

-- CREATE USER takes no variables: build the statement, with the password quoted by the
-- server. A missing or empty password becomes NULL, which is a syntax error: nothing runs.
SET @create = CONCAT('CREATE USER IF NOT EXISTS ''ofnotify_ro''@''%'' IDENTIFIED BY ',
                     QUOTE(NULLIF(@password, '')));
PREPARE statement FROM @create;
EXECUTE statement;
DEALLOCATE PREPARE statement;
-- An existing account gets the given password.
SET @alter = CONCAT('ALTER USER ''ofnotify_ro''@''%'' IDENTIFIED BY ', QUOTE(@password));
PREPARE statement FROM @alter;
EXECUTE statement;
DEALLOCATE PREPARE statement;

-- Table names as Openfire creates them (they are case-sensitive on Linux).
GRANT SELECT ON ofOffline TO 'ofnotify_ro'@'%';
GRANT SELECT ON ofPresence TO 'ofnotify_ro'@'%';
GRANT SELECT (username, name, email) ON ofUser TO 'ofnotify_ro'@'%';
