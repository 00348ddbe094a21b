"""Openfire's own tables in a test database, written the way Openfire writes them.

The DDL is Openfire's (distribution/src/database/openfire_postgresql.sql) for the three
tables ofnotify reads. Rows follow ../shared/FACTS.md: 15-character zero-padded epoch
milliseconds, stanzas without xmlns="jabber:client" in Openfire's attribute order,
messageSize in UTF-16 units, message IDs handed out in blocks.
"""

from __future__ import annotations

import itertools
import time
from xml.sax.saxutils import escape, quoteattr

import psycopg

OPENFIRE_TABLES = """
CREATE TABLE ofUser (
  username              VARCHAR(64)     NOT NULL,
  storedKey             VARCHAR(32),
  serverKey             VARCHAR(32),
  salt                  VARCHAR(32),
  iterations            INTEGER,
  plainPassword         VARCHAR(32),
  encryptedPassword     VARCHAR(255),
  name                  VARCHAR(100),
  email                 VARCHAR(100),
  creationDate          CHAR(15)        NOT NULL,
  modificationDate      CHAR(15)        NOT NULL,
  CONSTRAINT ofUser_pk PRIMARY KEY (username)
);
CREATE INDEX ofUser_cDate_idx ON ofUser (creationDate);
CREATE TABLE ofOffline (
  username              VARCHAR(64)     NOT NULL,
  messageID             INTEGER         NOT NULL,
  creationDate          CHAR(15)        NOT NULL,
  messageSize           INTEGER         NOT NULL,
  stanza                TEXT            NOT NULL,
  CONSTRAINT ofOffline_pk PRIMARY KEY (username, messageID)
);
CREATE TABLE ofPresence (
  username              VARCHAR(64)     NOT NULL,
  offlinePresence       TEXT,
  offlineDate           VARCHAR(15)     NOT NULL,
  CONSTRAINT ofPresence_pk PRIMARY KEY (username)
);
"""


def of_date(ms: int | None = None) -> str:
    return str(int(time.time() * 1000) if ms is None else ms).zfill(15)


def chat_stanza(
    to: str, sender: str, body: str | None, msg_id: str, *, extra: str = "", mtype: str = "chat"
) -> str:
    """Openfire's attribute order: type, to, id, xml:lang, from."""
    inner = f"<body>{escape(body)}</body>" if body is not None else ""
    return (
        f"<message type={quoteattr(mtype)} to={quoteattr(to)} id={quoteattr(msg_id)} "
        f'xml:lang="en" from={quoteattr(sender)}>{inner}{extra}</message>'
    )


def displayed_stanza(to: str, sender: str, marked_id: str, msg_id: str = "mk1") -> str:
    return chat_stanza(
        to,
        sender,
        None,
        msg_id,
        extra=f'<displayed xmlns="urn:xmpp:chat-markers:0" id="{marked_id}"/>',
    )


class OpenfireDb:
    """Plays Openfire's part against a PostgreSQL database."""

    def __init__(self, psycopg_conninfo: str, domain: str = "example.com") -> None:
        self.conninfo = psycopg_conninfo
        self.domain = domain
        # Openfire's id sequence: increasing, handed out in blocks, with jumps.
        self._ids = itertools.chain(range(1, 7), itertools.count(11))

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(sql, params)  # type: ignore[arg-type]

    def create_tables(self) -> None:
        self.execute(OPENFIRE_TABLES)

    def add_user(self, username: str, name: str | None, email: str | None) -> None:
        self.execute(
            "INSERT INTO ofUser (username, plainPassword, name, email, creationDate, "
            "modificationDate) VALUES (%s, 'pw', %s, %s, %s, %s)",
            (username, name, email, of_date(), of_date()),
        )

    def user_logged_out(self, username: str) -> None:
        self.execute(
            "INSERT INTO ofPresence (username, offlinePresence, offlineDate) VALUES (%s, NULL, %s)",
            (username, of_date()),
        )

    def store_offline(self, username: str, stanza: str) -> int:
        message_id = next(self._ids)
        self.execute(
            "INSERT INTO ofOffline (username, messageID, creationDate, messageSize, stanza) "
            "VALUES (%s, %s, %s, %s, %s)",
            (username, message_id, of_date(), len(stanza.encode("utf-16-le")) // 2, stanza),
        )
        return message_id

    def store_chat(self, to_user: str, from_user: str, body: str, msg_id: str) -> int:
        stanza = chat_stanza(
            f"{to_user}@{self.domain}", f"{from_user}@{self.domain}/desk", body, msg_id
        )
        return self.store_offline(to_user, stanza)

    def deliver_all(self, username: str) -> None:
        """The user sent initial presence: Openfire delivers and deletes their rows."""
        self.execute("DELETE FROM ofOffline WHERE username = %s", (username,))
        self.execute("DELETE FROM ofPresence WHERE username = %s", (username,))
