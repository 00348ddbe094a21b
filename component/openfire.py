"""Read-only access to Openfire's own tables.

Openfire creates its tables unquoted (`CREATE TABLE ofOffline`), so PostgreSQL folds
the names to lower case while MySQL keeps them as written. Declaring them unquoted
here emits SQL that resolves the same way on both.

What is read (see ../shared/FACTS.md for how Openfire writes it):
- `ofOffline(username, messageID, creationDate, messageSize, stanza)`: a row per
  stored offline stanza; removed when delivered at the user's initial presence;
- `ofUser(username, name, email, ...)`: display name and email address;
- `ofPresence(username, offlinePresence, offlineDate)`: present only while offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()


def _col(name: str, type_: object, **kw: object) -> Column[object]:
    return Column(name, type_, quote=False, **kw)  # type: ignore[arg-type]


of_offline = Table(
    "ofOffline",
    metadata,
    _col("username", String(64), primary_key=True),
    _col("messageID", Integer, primary_key=True),
    _col("creationDate", String(15), nullable=False),
    _col("messageSize", Integer, nullable=False),
    _col("stanza", Text, nullable=False),
    quote=False,
)

of_user = Table(
    "ofUser",
    metadata,
    _col("username", String(64), primary_key=True),
    _col("name", String(100)),
    _col("email", String(100)),
    _col("creationDate", String(15), nullable=False),
    _col("modificationDate", String(15), nullable=False),
    quote=False,
)

of_presence = Table(
    "ofPresence",
    metadata,
    _col("username", String(64), primary_key=True),
    _col("offlinePresence", Text),
    _col("offlineDate", String(15), nullable=False),
    quote=False,
)

Key = tuple[str, int]  # (username, messageID)


@dataclass(frozen=True)
class OfflineRow:
    username: str
    message_id: int
    creation_ms: int
    stanza: str

    @property
    def key(self) -> Key:
        return (self.username, self.message_id)


@dataclass(frozen=True)
class UserInfo:
    name: str | None
    email: str | None


def millis(value: str | None) -> int:
    """Openfire's dates are 15-character zero-padded epoch milliseconds."""
    try:
        return int((value or "0").strip() or 0)
    except ValueError:
        return 0


def as_openfire_date(ms: int) -> str:
    return str(max(0, ms)).zfill(15)


async def new_keys(
    conn: AsyncConnection, above_id: int, since_ms: int | None = None
) -> list[tuple[str, int, int]]:
    """Keys (no stanzas) of rows past our cursor; the caller filters keys it knows.

    `messageID > above_id` reads only the primary-key index. IDs come in blocks per
    cluster node, so a quiet node can still hand out IDs below our high-water mark:
    `since_ms` adds the creation-date test that finds those, at the price of a full
    scan (Openfire indexes neither column), so callers ask for it only now and then.
    """
    c = of_offline.c
    condition = c.messageID > above_id
    if since_ms is not None:
        condition = condition | (c.creationDate >= as_openfire_date(since_ms))
    stmt = select(c.username, c.messageID, c.creationDate).where(condition)
    rows = (await conn.execute(stmt)).all()
    return [(r[0], int(r[1]), millis(r[2])) for r in rows]


async def stanzas(conn: AsyncConnection, keys: Sequence[Key]) -> list[OfflineRow]:
    out: list[OfflineRow] = []
    c = of_offline.c
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        stmt = select(c.username, c.messageID, c.creationDate, c.stanza).where(
            tuple_(c.username, c.messageID).in_(chunk)
        )
        for r in (await conn.execute(stmt)).all():
            out.append(OfflineRow(r[0], int(r[1]), millis(r[2]), r[3] or ""))
    return out


async def present_keys(conn: AsyncConnection, usernames: Iterable[str]) -> set[Key]:
    """Which of these users' rows still exist (the primary key's prefix makes it cheap)."""
    names = sorted(set(usernames))
    found: set[Key] = set()
    c = of_offline.c
    for start in range(0, len(names), 500):
        stmt = select(c.username, c.messageID).where(c.username.in_(names[start : start + 500]))
        found.update((r[0], int(r[1])) for r in (await conn.execute(stmt)).all())
    return found


async def max_message_id(conn: AsyncConnection) -> int:
    from sqlalchemy import func

    value = (await conn.execute(select(func.max(of_offline.c.messageID)))).scalar()
    return int(value or 0)


async def user_info(conn: AsyncConnection, username: str) -> UserInfo | None:
    c = of_user.c
    row = (await conn.execute(select(c.name, c.email).where(c.username == username))).first()
    if row is None:
        return None
    return UserInfo((row[0] or "").strip() or None, (row[1] or "").strip() or None)


async def is_offline(conn: AsyncConnection, username: str) -> bool:
    """Openfire writes ofPresence at logout and deletes it at available presence."""
    c = of_presence.c
    row = (await conn.execute(select(c.username).where(c.username == username))).first()
    return row is not None
