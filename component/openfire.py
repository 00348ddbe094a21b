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

from collections.abc import Collection, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Result,
    String,
    Table,
    Text,
    case,
    func,
    null,
    select,
    text,
    tuple_,
)
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


KeyRow = tuple[str, int, int]  # (username, messageID, creation ms)


async def recent_rows(
    conn: AsyncConnection, above_id: int, stanzas_above: int, known: Container[Key] = ()
) -> tuple[list[KeyRow], list[OfflineRow]]:
    """Rows with `messageID > above_id`, in one round trip: keys of those not `known`,
    and whole rows (with stanzas) for those above `stanzas_above`, the high-water mark.

    The test reads the whole primary-key index (messageID is its second column;
    Openfire indexes it nowhere else) plus the heap of the matching rows, which sit
    mostly at the heap's end. Rows between the two bounds were usually seen in an
    earlier poll: their stanzas are left out, the caller fetches the few it lacks.
    """
    c = of_offline.c
    new_stanza = case((c.messageID > stanzas_above, c.stanza), else_=null())
    stmt = select(c.username, c.messageID, c.creationDate, new_stanza).where(c.messageID > above_id)
    keys: list[KeyRow] = []
    rows: list[OfflineRow] = []
    for username, message_id, created, stanza in (await conn.execute(stmt)).all():
        if stanza is None and (username, message_id) in known:
            continue  # most of the window, every poll: skip the conversions
        key = (username, int(message_id), millis(created))
        keys.append(key)
        if stanza is not None:
            rows.append(OfflineRow(*key, stanza))
    return keys, rows


async def heap_blocks(conn: AsyncConnection) -> int:
    """PostgreSQL: ofOffline's size in heap blocks (no privilege needed)."""
    stmt = text(
        "SELECT pg_relation_size(CAST('ofOffline' AS regclass)) "
        "/ current_setting('block_size')::int"
    )
    return int((await conn.execute(stmt)).scalar() or 0)


async def created_in_blocks(
    conn: AsyncConnection, first: int, end: int | None, since_ms: int, upto_id: int | None = None
) -> list[KeyRow]:
    """PostgreSQL ≥ 14: keys of rows in heap blocks [first, end) created at or after
    `since_ms` (and with `messageID <= upto_id`). A TID range scan reads only those
    blocks; `end=None` reads to the end."""
    c = of_offline.c
    tid = "ctid >= CAST(:first AS tid)" + ("" if end is None else " AND ctid < CAST(:end AS tid)")
    bounds = {"first": f"({first},0)"} | ({} if end is None else {"end": f"({end},0)"})
    where = [text(tid).bindparams(**bounds), c.creationDate >= as_openfire_date(since_ms)]
    if upto_id is not None:
        where.append(c.messageID <= upto_id)
    stmt = select(c.username, c.messageID, c.creationDate).where(*where)
    return _key_rows(await conn.execute(stmt))


async def username_after(conn: AsyncConnection, after: str, rows: int) -> str | None:
    """The username `rows` rows past `after` in primary-key order; None past the end."""
    c = of_offline.c
    stmt = (
        select(c.username)
        .where(c.username > after)
        .order_by(c.username)
        .offset(max(0, rows - 1))
        .limit(1)
    )
    return (await conn.execute(stmt)).scalar()


async def created_in_users(
    conn: AsyncConnection,
    after: str,
    upto: str | None,
    since_ms: int,
    upto_id: int | None = None,
) -> list[KeyRow]:
    """Keys of rows with `after < username <= upto` (a primary-key range) created at or
    after `since_ms` (and with `messageID <= upto_id`); `upto=None` reads to the end."""
    c = of_offline.c
    where = [c.username > after, c.creationDate >= as_openfire_date(since_ms)]
    if upto is not None:
        where.append(c.username <= upto)
    if upto_id is not None:
        where.append(c.messageID <= upto_id)
    stmt = select(c.username, c.messageID, c.creationDate).where(*where)
    return _key_rows(await conn.execute(stmt))


def _key_rows(result: Result[Any]) -> list[KeyRow]:
    return [(r[0], int(r[1]), millis(r[2])) for r in result.all()]


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


async def still_stored(conn: AsyncConnection, keys: Collection[Key]) -> set[Key]:
    """Which of these rows still exist: the users' primary-key prefixes, narrowed to
    the message IDs asked about, so only those rows come back."""
    names = sorted({u for u, _ in keys})
    ids = sorted({m for _, m in keys})
    c = of_offline.c
    stmt = select(c.username, c.messageID).where(c.username.in_(names), c.messageID.in_(ids))
    found = {(r[0], int(r[1])) for r in (await conn.execute(stmt)).all()}
    return found & set(keys)


async def max_message_id(conn: AsyncConnection) -> int:
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
