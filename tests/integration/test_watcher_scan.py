"""The watcher's per-poll reads against Openfire's table in real PostgreSQL: new rows in
one query, late commits inside the ID window, and the rotating scan that finds rows from
lagging cluster ID blocks a slice per poll."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from component import openfire
from component.config import OpenfireConfig
from component.ingest import WatcherBatch
from component.offline_scan import HeapBlocks, RotatingScan, UsernameRanges
from component.store import create_schema, make_engine, make_sessionmaker
from component.watcher import ID_WINDOW, OVERLAP_MS, Watcher, parse_source_key, source_key
from tests.support.openfire_db import OpenfireDb, chat_stanza, of_date

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
OLD_USERS = [f"u{i:03d}" for i in range(100)]


def insert(db: OpenfireDb, rows: list[tuple[str, int, int]]) -> None:
    """(username, messageID, creation ms) rows, as Openfire writes them."""
    values = []
    for username, message_id, created in rows:
        stanza = chat_stanza(
            f"{username}@{db.domain}", f"peer@{db.domain}/a", f"m{message_id}", f"id{message_id}"
        )
        values.append((username, message_id, of_date(created), len(stanza), stanza))
    with psycopg.connect(db.conninfo, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO ofOffline VALUES (%s, %s, %s, %s, %s)", values)


def fill_old_rows(db: OpenfireDb, now_ms: int) -> None:
    """2,000 rows from yesterday, then holes all over the heap (rows delivered and
    vacuumed), so that new rows land in early and middle blocks, not only at the end."""
    insert(db, [(OLD_USERS[i % 100], 10_000 + i, now_ms - DAY_MS + i) for i in range(2000)])
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        conn.execute("DELETE FROM ofOffline WHERE messageID % 7 = 0")
        conn.execute("VACUUM ofOffline")


@pytest.fixture
async def openfire_engine(openfire_db: OpenfireDb) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(openfire_db.conninfo, pre_ping=False)  # psycopg, as operators use
    yield engine
    await engine.dispose()


class Recorder:
    """Records the (first, end) or (after, upto) bounds each slice read used."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bounds: list[tuple[Any, Any]] = []
        for name in ("created_in_blocks", "created_in_users"):
            original = getattr(openfire, name)
            monkeypatch.setattr(openfire, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        async def recorded(conn: Any, low: Any, high: Any, since_ms: int, *rest: Any) -> Any:
            self.bounds.append((low, high))
            return await original(conn, low, high, since_ms, *rest)

        return recorded


async def one_cycle(engine: AsyncEngine, scan: RotatingScan, cursor_ms: int) -> set[Any]:
    found: set[Any] = set()
    cycles = scan.cycles
    for _ in range(1000):
        async with engine.connect() as conn:
            found |= {(u, m) for u, m, _ in await scan.read(conn, cursor_ms)}
        scan.advance()
        if scan.cycles > cycles:
            return found
    raise AssertionError("the scan never completed a cycle")


def assert_slices_cover_the_table(bounds: list[tuple[Any, Any]]) -> None:
    """Slices follow each other without gaps, from the start to an open end; block
    ranges are all the same size."""
    first_low = 0 if isinstance(bounds[0][0], int) else ""
    assert bounds[0][0] == first_low
    for (_, end), (low, _) in itertools.pairwise(bounds):
        assert low == end
    assert bounds[-1][1] is None
    if isinstance(first_low, int):
        assert len({end - low for low, end in bounds[:-1]}) == 1


@pytest.mark.parametrize(
    "slicer", [HeapBlocks(slices=8), UsernameRanges(rows=150)], ids=["heap", "usernames"]
)
async def test_rotating_scan_finds_lagging_block_rows_within_a_cycle(
    openfire_db: OpenfireDb,
    openfire_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    slicer: Any,
) -> None:
    now = int(time.time() * 1000)
    fill_old_rows(openfire_db, now)
    scan = RotatingScan(now, OVERLAP_MS, slicer)
    recorder = Recorder(monkeypatch)
    assert await one_cycle(openfire_engine, scan, now) == set()  # yesterday's rows are old
    slices = len(recorder.bounds)
    assert slices >= 5  # several slices, not the table at once
    assert_slices_cover_the_table(recorder.bounds)

    # A cluster node still drawing from an old ID block; users before, among and after
    # the old ones; and a row from a node whose clock is an hour behind (beyond the
    # overlap: not looked for, so never announced late).
    lagging = [("a", 1, now), ("u000", 2, now), ("u050", 3, now - 5_000), ("u099", 4, now)]
    lagging += [("zz", 5, now), ("u073", 6, now)]
    insert(openfire_db, [*lagging, ("u010", 7, now - 3_600_000)])
    recorder.bounds.clear()
    found = await one_cycle(openfire_engine, scan, now)
    assert found == {(u, m) for u, m, _ in lagging}
    assert_slices_cover_the_table(recorder.bounds)


@pytest.mark.parametrize(
    "slicer", [HeapBlocks(slices=8), UsernameRanges(rows=150)], ids=["heap", "usernames"]
)
async def test_rows_the_id_window_reads_are_left_out_of_the_scan(
    openfire_db: OpenfireDb, openfire_engine: AsyncEngine, slicer: Any
) -> None:
    """What the window reads every poll (IDs above `upto_id`) is not read again by the
    slice that reaches the end of the table; rows far below it still are."""
    now = int(time.time() * 1000)
    fill_old_rows(openfire_db, now)
    scan = RotatingScan(now, OVERLAP_MS, slicer)
    await one_cycle(openfire_engine, scan, now)
    recent = [(OLD_USERS[i], 50_000 + i, now) for i in range(40)]  # the window's
    lagging = [("a", 1, now), ("u050", 3, now)]
    insert(openfire_db, [*recent, *lagging])
    found: set[Any] = set()
    cycles = scan.cycles
    while scan.cycles == cycles:
        async with openfire_engine.connect() as conn:
            found |= {(u, m) for u, m, _ in await scan.read(conn, now, upto_id=49_999)}
        scan.advance()
    assert found == {(u, m) for u, m, _ in lagging}


async def test_a_slice_is_read_again_until_its_poll_commits(
    openfire_db: OpenfireDb, openfire_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time() * 1000)
    fill_old_rows(openfire_db, now)
    scan = RotatingScan(now, OVERLAP_MS, UsernameRanges(rows=300))
    recorder = Recorder(monkeypatch)
    async with openfire_engine.connect() as conn:
        await scan.read(conn, now)
        scan.advance()
        await scan.read(conn, now)  # this poll fails before committing: no advance
        await scan.read(conn, now)
    assert recorder.bounds[1] == recorder.bounds[2] != recorder.bounds[0]


async def test_the_floor_follows_the_cursor_a_cycle_behind(
    openfire_db: OpenfireDb, openfire_engine: AsyncEngine
) -> None:
    """Rows created long after the stored cursor stay found, and rows created before a
    cycle's start minus the overlap stop being read once that cycle is over."""
    now = int(time.time() * 1000)
    insert(openfire_db, [("jenny", 1, now - 60_000), ("jenny", 2, now - 30_000)])
    scan = RotatingScan(now - 60_000, OVERLAP_MS, UsernameRanges())
    assert await one_cycle(openfire_engine, scan, now - 60_000) == {("jenny", 1), ("jenny", 2)}
    assert await one_cycle(openfire_engine, scan, now) == {("jenny", 1), ("jenny", 2)}
    assert await one_cycle(openfire_engine, scan, now) == set()
    assert scan.floor_ms == now - OVERLAP_MS


# --------------------------------------------------------------------------- the watcher


class RecordingIngest:
    """Stands in for Ingest: keeps every batch (positions are not stored)."""

    def __init__(self) -> None:
        self.batches: list[WatcherBatch] = []

    async def watcher(self, batch: WatcherBatch, watcher_id: int = 1) -> list[int]:
        self.batches.append(batch)
        return []

    def seen(self) -> list[str]:
        return [m.source_key for b in self.batches for m in b.messages]


@pytest.fixture
def statements(openfire_engine: AsyncEngine) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(" ".join(str(args[2]).split()).lower())

    event.listen(openfire_engine.sync_engine, "before_cursor_execute", record)
    yield sent
    event.remove(openfire_engine.sync_engine, "before_cursor_execute", record)


@pytest.fixture
async def watcher(
    tmp_path: Path, openfire_db: OpenfireDb, openfire_engine: AsyncEngine
) -> AsyncIterator[tuple[Watcher, RecordingIngest]]:
    store = make_engine(f"sqlite:///{tmp_path / 'ofnotify.db'}")
    await create_schema(store)
    ingest = RecordingIngest()
    config = OpenfireConfig(database_url=openfire_db.conninfo, domain=openfire_db.domain)
    poller = Watcher(config, openfire_engine, make_sessionmaker(store), ingest)  # type: ignore[arg-type]
    yield poller, ingest
    await poller.close()
    await store.dispose()


def stanza_fetches(sent: list[str]) -> list[str]:
    return [s for s in sent if "ofoffline.stanza" in s and "case when" not in s]


async def test_new_rows_come_with_their_stanzas_in_one_query(
    openfire_db: OpenfireDb, watcher: tuple[Watcher, RecordingIngest], statements: list[str]
) -> None:
    poller, ingest = watcher
    now = int(time.time() * 1000)
    insert(openfire_db, [("jenny", 5000, now)])
    await poller.poll()  # fresh start at message 5000: not announced
    statements.clear()
    insert(openfire_db, [("jenny", 5001, now), ("michael", 5002, now), ("jenny", 5010, now)])
    await poller.poll()
    assert ingest.seen() == ["of:jenny:5001", "of:michael:5002", "of:jenny:5010"]
    assert stanza_fetches(statements) == []
    # Nothing new: nothing announced again, still no stanza fetched.
    await poller.poll()
    assert len(ingest.seen()) == 3
    assert stanza_fetches(statements) == []


async def test_a_late_commit_inside_the_id_window_is_fetched_and_announced(
    openfire_db: OpenfireDb, watcher: tuple[Watcher, RecordingIngest], statements: list[str]
) -> None:
    poller, ingest = watcher
    now = int(time.time() * 1000)
    insert(openfire_db, [("jenny", 5000, now)])
    await poller.poll()
    insert(openfire_db, [("jenny", 5001, now)])
    await poller.poll()
    statements.clear()
    # Took its ID before 5001 but committed after the watcher moved past it.
    insert(openfire_db, [("michael", 4990, now)])
    await poller.poll()
    assert ingest.seen() == ["of:jenny:5001", "of:michael:4990"]
    assert len(stanza_fetches(statements)) == 1


async def test_the_watcher_finds_a_row_far_below_the_window_within_a_scan_cycle(
    openfire_db: OpenfireDb, watcher: tuple[Watcher, RecordingIngest]
) -> None:
    poller, ingest = watcher
    now = int(time.time() * 1000)
    fill_old_rows(openfire_db, now)
    insert(openfire_db, [("jenny", 50_000, now)])
    await poller.poll()
    insert(openfire_db, [("michael", 50_000 - 10 * ID_WINDOW, now)])  # another node's block
    for _ in range(12):  # a cycle is at most SLICES_PER_CYCLE polls (+1 for the open end)
        await poller.poll()
        if ingest.seen():
            break
    assert ingest.seen() == [f"of:michael:{50_000 - 10 * ID_WINDOW}"]


def test_source_keys_name_their_rows() -> None:
    assert parse_source_key(source_key("jenny", 42)) == ("jenny", 42)
    assert parse_source_key(source_key("a:b", 7)) == ("a:b", 7)
    assert parse_source_key("xep0357:abc") is None
    assert parse_source_key("of:jenny:") is None
