"""Openfire database watcher: offline messages and markers, read from outside.

Each poll costs what changed, not the table:
1. in one query, keys of the rows in the message-ID window (IDs above the high-water
   mark minus `ID_WINDOW`: a transaction that took an ID earlier may commit later) and
   whole rows for those above the mark, the new ones;
2. one slice of the rotating scan (component/offline_scan.py): rows created recently
   but far below the mark, from lagging cluster ID blocks or very late commits;
3. stanzas for keys in the window or the slice that are new to us, usually none;
4. for a few accounts with pending notifications, taking turns, which of their rows
   still exist (a primary-key prefix lookup): rows that vanished were delivered. This
   is recorded after the poll's new messages, which thus never wait for it.
The cursor commits together with the poll's new messages, so a crash repeats at most
the last poll, which the dedup keys absorb. First start begins at "now": messages
stored before ofnotify existed are not announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from . import metrics, openfire
from .config import OpenfireConfig
from .ingest import Ingest, SeenMessage, WatcherBatch
from .offline_scan import RotatingScan
from .stanzas import StanzaError, parse_message
from .store import MessageState, MissedMessage, OutboxItem, OutboxStatus, WatcherState

log = logging.getLogger(__name__)

# Rows written by a node whose clock lags, or committed late, land behind the cursor.
OVERLAP_MS = 10_000
# IDs just below the high-water mark are re-read each poll (a transaction that took an
# ID earlier may commit later); rows further below are the rotating scan's.
ID_WINDOW = 1_000
# Accounts whose pending notifications are re-checked for deliveries in one poll; the
# send-time check covers the rest, this only makes cancellations prompt. A few every
# poll rather than many every few polls keeps each poll's cost even.
RECHECK_PER_POLL = 20
MAX_KNOWN_KEYS = 200_000
NOTIFIABLE_TYPES = {"chat", "normal"}


def source_key(username: str, message_id: int) -> str:
    return f"of:{username}:{message_id}"


def parse_source_key(key: str) -> openfire.Key | None:
    """The ofOffline row behind a watcher's source key; None for other sources."""
    prefix, _, rest = key.partition(":")
    username, _, message_id = rest.rpartition(":")
    if prefix != "of" or not username or not message_id.isdigit():
        return None
    return (username, int(message_id))


@dataclass
class PollStats:
    new_rows: int = 0
    db_seconds: float = 0.0
    lag_seconds: float = 0.0


class Watcher:
    def __init__(
        self,
        config: OpenfireConfig,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        ingest: Ingest,
    ) -> None:
        self._config = config
        self._engine = engine
        self._sessionmaker = sessionmaker
        self._ingest = ingest
        self._high_id = 0
        self._cursor_ms = 0
        self._started = False
        # Keys handled in the overlap window; bounded, oldest forgotten first.
        self._known: OrderedDict[openfire.Key, int] = OrderedDict()
        self._bad_keys: set[openfire.Key] = set()
        self._scan: RotatingScan | None = None  # needs the stored cursor
        self._conns: list[AsyncConnection] = []
        self._recheck_after = ""  # rotating position among accounts to re-check
        # Rows of unread messages to re-check in the next poll (→ account, source key).
        self._watched: dict[openfire.Key, tuple[str, str]] = {}
        self.last_poll: PollStats = PollStats()
        self.last_success: float | None = None
        self.caught_up = asyncio.Event()  # set after the first successful poll

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self.poll()
                if failures:
                    log.info("Openfire database reachable again; caught up")
                failures = 0
            except Exception as exc:
                failures += 1
                level = logging.WARNING if failures < 5 or failures % 60 == 0 else logging.DEBUG
                log.log(level, "watcher poll failed (%d in a row): %s", failures, _describe(exc))
                await asyncio.sleep(min(30.0, self._config.poll_interval * 2 ** min(failures, 5)))
                continue
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self._config.poll_interval - elapsed))

    async def _load_position(self) -> None:
        async with self._sessionmaker() as session:
            state = await session.get(WatcherState, 1)
        if state is not None:
            self._high_id, self._cursor_ms = state.high_message_id, state.cursor_ms
            log.info("watcher resumes after message id %d", self._high_id)
        else:
            self._cursor_ms = int(time.time() * 1000)
            async with self._engine.connect() as conn:
                self._high_id = await openfire.max_message_id(conn)
                await self._know_existing(conn)
            await self._ingest.watcher(WatcherBatch(position=(self._high_id, self._cursor_ms)))
            log.info(
                "watcher starts fresh at message id %d; older rows are not announced", self._high_id
            )
        self._started = True

    async def _know_existing(self, conn: AsyncConnection) -> None:
        """First start: every row there now is old news, also those that the ID window
        and the rotating scan would read again. Reading the recent ones costs one scan
        of the table, once per installation."""
        keys, _ = await openfire.recent_rows(conn, self._high_id - ID_WINDOW, self._high_id)
        keys += await openfire.created_in_users(conn, "", None, self._cursor_ms - 2 * OVERLAP_MS)
        for username, message_id, created in keys:
            self._known[(username, message_id)] = created

    async def poll(self) -> PollStats:
        if not self._started:
            await self._load_position()
        if self._scan is None:
            self._scan = RotatingScan(self._cursor_ms, OVERLAP_MS)
        stats = PollStats()
        watched = self._watched
        db_started = time.monotonic()
        try:
            conns = await self._connections()
            (fresh, rows), present = await asyncio.gather(
                self._read(conns[0], conns[1], self._scan),
                openfire.still_stored(conns[2], watched.keys()) if watched else _nothing(),
            )
        except Exception:
            await self._drop_connection()  # maybe broken (Openfire's database restarted)
            raise
        stats.db_seconds = time.monotonic() - db_started

        batch = WatcherBatch()
        for row in sorted(rows, key=lambda r: r.message_id):
            self._handle_row(row, batch)
        # Keys we knew were counted when they were new: only fresh ones can move these.
        high = max([self._high_id, *(m for _, m in fresh)])
        cursor = max([self._cursor_ms, *fresh.values()])
        if rows or batch or (high, cursor) != (self._high_id, self._cursor_ms):
            batch.position = (high, cursor)
            await self._ingest.watcher(batch)
        # Only now is it durable: remember keys and advance.
        self._known.update(fresh)
        self._high_id, self._cursor_ms = high, cursor
        self._scan.advance()
        self._forget_old()
        self._report(stats, rows)
        # Deliveries and the next accounts to re-check come after the new messages are
        # committed: both read ofnotify's store, and new messages should not wait.
        if delivered := self._vanished(watched, present):
            await self._ingest.watcher(WatcherBatch(delivered=delivered))
        self._watched = await self._unread_to_recheck()
        return stats

    async def _connections(self) -> list[AsyncConnection]:
        """Connections kept across polls, in autocommit: a poll then costs only its
        statements, with no pool checkout, BEGIN or ROLLBACK around them (all reads;
        each statement sees what was committed when it started, as before). Three, so
        the window query, the scan slice and the re-check run at the same time: a poll's
        database time is the longest of them, not their sum."""
        while len(self._conns) < 3:
            conn = await self._engine.connect()
            self._conns.append(await conn.execution_options(isolation_level="AUTOCOMMIT"))
        return self._conns

    async def close(self) -> None:
        """Give the kept connections back (the end of `run`; tests that call `poll`)."""
        await self._drop_connection(broken=False)

    async def _drop_connection(self, broken: bool = True) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                if broken:  # the pool must not hand it out again
                    await conn.invalidate()
                await conn.close()

    async def _read(
        self, conn: AsyncConnection, scan_conn: AsyncConnection, scan: RotatingScan
    ) -> tuple[dict[openfire.Key, int], list[openfire.OfflineRow]]:
        """Keys new to us (→ creation ms) seen this poll, and their whole rows."""
        known = self._known
        low, high = self._high_id - ID_WINDOW, self._high_id
        (keys, rows), scanned = await asyncio.gather(
            openfire.recent_rows(conn, low, high, known),
            scan.read(scan_conn, self._cursor_ms, upto_id=low),
        )
        keys += scanned
        fresh = {(u, m): created for u, m, created in keys if (u, m) not in known}
        # New keys that came without a stanza: late commits inside the ID window, rows
        # the rotating scan found, the whole window after a restart. Usually none.
        missing = fresh.keys() - {r.key for r in rows}
        if missing:
            rows += await openfire.stanzas(conn, sorted(missing))
        return fresh, [r for r in rows if r.key in fresh]

    def _report(self, stats: PollStats, rows: list[openfire.OfflineRow]) -> None:
        stats.new_rows = len(rows)
        if rows:
            newest = max(r.creation_ms for r in rows)
            stats.lag_seconds = max(0.0, time.time() - newest / 1000)
            metrics.WATCHER_LAG.set(stats.lag_seconds)
        self.last_poll = stats
        self.last_success = time.time()
        self.caught_up.set()
        metrics.WATCHER_POLL_DB.observe(stats.db_seconds)
        metrics.WATCHER_LAST_SUCCESS.set(self.last_success)

    def _handle_row(self, row: openfire.OfflineRow, batch: WatcherBatch) -> None:
        account = f"{row.username}@{self._config.domain}"
        try:
            parsed = parse_message(row.stanza)
        except StanzaError as exc:
            if row.key not in self._bad_keys:  # once per row, not once per poll
                self._bad_keys.add(row.key)
                log.warning(
                    "skipping ofOffline row (%s, %d): %s", row.username, row.message_id, exc
                )
            return
        if parsed.marker is not None and parsed.marker.kind in ("displayed", "acknowledged"):
            # Stored for `username`, sent by the reader: the reader read `username`'s messages.
            reader = parsed.sender_bare
            batch.markers.append((reader, account, parsed.marker.id))
        if not parsed.is_content or parsed.type not in NOTIFIABLE_TYPES:
            return
        stored_at = dt.datetime.fromtimestamp(row.creation_ms / 1000, dt.UTC)
        batch.messages.append(
            SeenMessage(account, source_key(row.username, row.message_id), parsed, stored_at)
        )

    async def _unread_to_recheck(self) -> dict[openfire.Key, tuple[str, str]]:
        """Rows behind unread messages of accounts whose pending notifications a
        delivery would cancel (→ account, source key); a bounded number of accounts
        per poll, taking turns."""
        async with self._sessionmaker() as session:
            stmt = (
                select(OutboxItem.account)
                .where(
                    OutboxItem.status == OutboxStatus.PENDING,
                    OutboxItem.source == "watcher",
                    OutboxItem.account > self._recheck_after,
                )
                .distinct()
                .order_by(OutboxItem.account)
                .limit(RECHECK_PER_POLL)
            )
            accounts = list((await session.execute(stmt)).scalars())
            self._recheck_after = accounts[-1] if len(accounts) == RECHECK_PER_POLL else ""
            unread = select(MissedMessage.account, MissedMessage.source_key).where(
                MissedMessage.account.in_(accounts), MissedMessage.state == MessageState.UNREAD
            )
            rows = (await session.execute(unread)).all() if accounts else []
        return {key: (account, skey) for account, skey in rows if (key := parse_source_key(skey))}

    @staticmethod
    def _vanished(
        watched: dict[openfire.Key, tuple[str, str]], present: set[openfire.Key]
    ) -> dict[str, list[str]]:
        gone: dict[str, list[str]] = {}
        for key, (account, skey) in watched.items():
            if key not in present:
                gone.setdefault(account, []).append(skey)
        return gone

    def _forget_old(self) -> None:
        """Forget keys no query can return again: created before the rotating scan's
        floor and the date overlap, and below the ID window."""
        horizon = self._cursor_ms - 2 * OVERLAP_MS
        if self._scan is not None:
            horizon = min(horizon, self._scan.floor_ms)
        lowest_id = self._high_id - ID_WINDOW
        while self._known:
            (_, message_id), created = next(iter(self._known.items()))
            rereadable = created >= horizon or message_id > lowest_id
            if len(self._known) <= MAX_KNOWN_KEYS and rereadable:
                break
            self._known.popitem(last=False)


async def _nothing() -> set[openfire.Key]:
    return set()


def _describe(exc: BaseException) -> str:
    # Driver errors can embed the connection URL; keep the class and first line only.
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"
