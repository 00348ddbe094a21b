"""How fast the Openfire watcher notices new offline messages, and what a poll costs.

    python -m bench.watcher_poll [--rows 100000] [--rate 200] [--seconds 20] [--poll-interval 1s]

A private PostgreSQL holds Openfire's tables (tests/support/openfire_db.py), with
`ofOffline` filled as Openfire fills it: --rows rows for --rows/--rows-per-user users,
created over the past week, IDs in blocks. ofnotify's real watcher runs in this process
over a real Ingest, GroupCommitter and SQLite store (as component/service.py wires them;
no XMPP, no dispatcher) with the example file's email digest rule, so every message is
recorded and leaves a pending digest. Its first poll starts "now": the old rows are not
announced. Then a second thread stores new offline messages at --rate per second for
--seconds, one INSERT per message as Openfire does.

Printed: detection latency (INSERT committed → the watcher's batch committed in
ofnotify's store), the watcher's database time per poll (`last_poll.db_seconds`) and per
statement (SQLAlchemy cursor events), the EXPLAIN (ANALYZE, BUFFERS) plan of the
per-poll query, and alternatives to it measured on the same table. Targets are printed
beside the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from component import openfire
from component.durations import parse_duration
from component.offline_scan import MAX_SLICE_BLOCKS, ROWS_PER_SLICE, SLICES_PER_CYCLE
from component.watcher import ID_WINDOW, OVERLAP_MS, RECHECK_PER_POLL, source_key

from .openfire_pipeline import (
    CpuSnapshot,
    OpenfirePostgres,
    OpenfireWriter,
    Pipeline,
    QuerySample,
    by_label,
    code_version,
    copy_offline,
    copy_users,
    cpu_lines,
    explain,
    fmt_ms,
    make_config,
    plan_summary,
    run_bench,
)
from .stats import quantiles

REPO = Path(__file__).resolve().parent.parent
TARGET_DETECTION_EXTRA_MS = 200.0  # p99 detection ≤ poll interval + 200 ms
TARGET_DB_MS = 20.0  # database time per poll at 100,000 rows
WEEK_MS = 7 * 86400 * 1000


# --------------------------------------------------------------------------- the load


@dataclass
class Inserter:
    """Openfire's part: one INSERT per offline message, at a steady rate, own thread."""

    conninfo: str
    writer: OpenfireWriter
    users: Sequence[str]
    rate: float
    seconds: float
    committed: dict[str, float] = field(default_factory=dict)  # source key → monotonic
    late: list[float] = field(default_factory=list)  # how far behind schedule (s)
    error: BaseException | None = None

    def run(self) -> None:
        import psycopg

        from .openfire_pipeline import INSERT_OFFLINE

        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                total = int(self.rate * self.seconds)
                interval = 1.0 / self.rate
                rng = self.writer.rng
                started = time.monotonic()
                for i in range(total):
                    due = started + i * interval
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        self.late.append(-delay)
                    to_user, from_user = rng.sample(self.users, 2)
                    row = self.writer.row(to_user, from_user, int(time.time() * 1000))
                    conn.execute(INSERT_OFFLINE, row)
                    self.committed[source_key(to_user, row[1])] = time.monotonic()
        except BaseException as exc:  # reported by the main thread
            self.error = exc


# --------------------------------------------------------------------------- alternatives


Query = Callable[[AsyncConnection, int, int], Awaitable[int]]


@dataclass
class Alternative:
    name: str
    queries: list[Query]
    settings: list[str] = field(default_factory=list)  # SET LOCAL … before the queries
    note: str = ""


def _keys(where: Any) -> Any:
    c = openfire.of_offline.c
    return select(c.username, c.messageID, c.creationDate).where(where)


# The measured polls run BEHIND IDs behind the table's high-water mark, as a watcher does
# under load (~200 new messages per poll at 200 msg/s).
BEHIND = 200


async def q_recent(conn: AsyncConnection, high: int, since_ms: int) -> int:
    """What every poll runs first (openfire.recent_rows)."""
    mark = high - BEHIND
    keys, _ = await openfire.recent_rows(conn, mark - ID_WINDOW, mark)
    return len(keys)


async def q_slice(conn: AsyncConnection, high: int, since_ms: int) -> int:
    """One rotating-scan slice from the middle of the heap, sized as HeapBlocks sizes it."""
    total = await openfire.heap_blocks(conn)
    size = max(1, min(MAX_SLICE_BLOCKS, -(-total // SLICES_PER_CYCLE)))
    first = total // 2
    return len(await openfire.created_in_blocks(conn, first, first + size, since_ms))


async def q_user_slice(conn: AsyncConnection, high: int, since_ms: int) -> int:
    """One username-range slice (what MySQL and PostgreSQL < 14 get)."""
    after = "user02500"
    upto = await openfire.username_after(conn, after, ROWS_PER_SLICE)
    return len(await openfire.created_in_users(conn, after, upto, since_ms))


async def q_before(conn: AsyncConnection, high: int, since_ms: int) -> int:
    """What every poll ran before: keys of the ID window, then stanzas of the new keys
    by (username, messageID) IN (...)."""
    mark = high - BEHIND
    keys = (await conn.execute(_keys(openfire.of_offline.c.messageID > mark - ID_WINDOW))).all()
    new = [(u, m) for u, m, _ in keys if m > mark]
    return len(keys) + len(await openfire.stanzas(conn, new))


async def q_or(conn: AsyncConnection, high: int, since_ms: int) -> int:
    """What every 10th poll ran before: the date test over the whole table."""
    c = openfire.of_offline.c
    where = (c.messageID > high) | (c.creationDate >= openfire.as_openfire_date(since_ms))
    return len((await conn.execute(_keys(where))).all())


async def q_id_only(conn: AsyncConnection, high: int, since_ms: int) -> int:
    return len((await conn.execute(_keys(openfire.of_offline.c.messageID > high))).all())


async def q_id_only_pk_columns(conn: AsyncConnection, high: int, since_ms: int) -> int:
    """Only the primary key's columns: an index-only scan can answer it."""
    c = openfire.of_offline.c
    stmt = select(c.username, c.messageID).where(c.messageID > high - BEHIND - ID_WINDOW)
    return len((await conn.execute(stmt)).all())


async def q_date_only(conn: AsyncConnection, high: int, since_ms: int) -> int:
    c = openfire.of_offline.c
    stmt = _keys(c.creationDate >= openfire.as_openfire_date(since_ms))
    return len((await conn.execute(stmt)).all())


def alternatives() -> list[Alternative]:
    return [
        Alternative(
            f"now 1/2, every poll: recent_rows (ID window, stanzas of {BEHIND} new IDs)",
            [q_recent],
        ),
        Alternative("now 2/2, every poll: one rotating-scan slice of heap blocks", [q_slice]),
        Alternative("now, both", [q_recent, q_slice]),
        Alternative(
            f"username-range slice of {ROWS_PER_SLICE:,} rows (MySQL, PostgreSQL < 14)",
            [q_user_slice],
        ),
        Alternative("before, every poll: ID-window keys, then stanzas by tuple IN", [q_before]),
        Alternative("before, every 10th poll: messageID > X OR creationDate >= Y", [q_or]),
        Alternative("creationDate >= Y alone (10 s window)", [q_date_only]),
        Alternative("ID window selecting (username, messageID) only", [q_id_only_pk_columns]),
    ]


def indexed_alternatives() -> list[Alternative]:
    note = "needs CREATE INDEX on Openfire's table (Openfire does not create these)"
    return [
        Alternative("OR query, with indexes on messageID and creationDate", [q_or], note=note),
        Alternative("messageID > X, with an index on messageID", [q_id_only], note=note),
        Alternative("creationDate >= Y, with an index on creationDate", [q_date_only], note=note),
    ]


INDEX_DDL = [
    "CREATE INDEX bench_ofoffline_mid ON ofOffline (messageID)",
    "CREATE INDEX bench_ofoffline_cdate ON ofOffline (creationDate)",
]
DROP_INDEX_DDL = ["DROP INDEX bench_ofoffline_mid", "DROP INDEX bench_ofoffline_cdate"]


@dataclass
class AltResult:
    alt: Alternative
    times: list[float]
    rows: int
    plans: list[str]  # one summary per statement (custom plan)
    generic: list[str]  # the same for the generic (prepared) plan
    statements: list[tuple[str, Any]]  # as SQLAlchemy sent them: (SQL, parameters)


async def measure(
    pipeline: Pipeline,
    pg: OpenfirePostgres,
    alt: Alternative,
    high: int,
    since_ms: int,
    runs: int,
    warmup: int = 12,
) -> AltResult:
    """Each alternative on one held connection, like the watcher's pooled one: psycopg
    prepares a statement on its 5th execution and PostgreSQL may then switch to a
    generic plan, so the warm-up covers both."""
    engine = pipeline.openfire_engine
    times: list[float] = []
    rows = 0
    async with engine.connect() as conn:
        for i in range(warmup + runs):
            started = time.perf_counter()
            for setting in alt.settings:
                await conn.execute(text(setting))
            rows = 0
            for query in alt.queries:
                rows += await query(conn, high, since_ms)
            elapsed = time.perf_counter() - started
            await conn.rollback()
            if i >= warmup:
                times.append(elapsed)
        # The statements as SQLAlchemy rendered them, for EXPLAIN.
        pipeline.queries.last.clear()
        captured: list[tuple[str, Any]] = []
        for query in alt.queries:
            pipeline.queries.last.clear()
            await query(conn, high, since_ms)
            captured += [v for k, v in pipeline.queries.last.items() if k != "other"]
        await conn.rollback()
    plans, generic = [], []
    for statement, params in captured:
        plans.append(
            plan_summary(
                await asyncio.to_thread(
                    explain, pg.conninfo, statement, params, settings=alt.settings
                )
            )
        )
        generic.append(
            plan_summary(
                await asyncio.to_thread(
                    explain, pg.conninfo, statement, params, settings=alt.settings, generic=True
                )
            )
        )
    return AltResult(alt, times, rows, plans, generic, captured)


async def measure_recheck(
    pipeline: Pipeline, users: Sequence[str], counts: Sequence[int], runs: int = 5
) -> list[tuple[int, int, list[float]]]:
    """What the delivery re-check costs (`openfire.still_stored`: which of the unread
    messages' rows still exist), by how many accounts are checked, one unread message
    each (the watcher checks RECHECK_PER_POLL accounts per poll)."""
    out = []
    async with pipeline.openfire_engine.connect() as conn:
        c = openfire.of_offline.c
        stmt = select(c.username, func.min(c.messageID)).group_by(c.username)
        first = dict((await conn.execute(stmt)).all())
        for count in counts:
            keys = [(u, int(first[u])) for u in users[:count] if u in first]
            times: list[float] = []
            found = 0
            for _ in range(runs + 2):
                started = time.perf_counter()
                found = len(await openfire.still_stored(conn, keys))
                times.append(time.perf_counter() - started)
            await conn.rollback()
            out.append((count, found, times[2:]))
    return out


# --------------------------------------------------------------------------- the bench


class WatcherBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="ofnotify-bench-watcher-"))
        self.pg = OpenfirePostgres(self.workdir)
        self.pipeline: Pipeline | None = None
        self.lines: list[str] = []
        self.current_sql: tuple[str, Any] = ("", None)

    def progress(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    def out(self, line: str = "") -> None:
        self.lines.append(line)

    async def run(self) -> None:
        args = self.args
        poll_interval = parse_duration(args.poll_interval)
        self.progress(f"workdir {self.workdir}; starting PostgreSQL")
        await asyncio.to_thread(self.pg.start)

        # -- Openfire's tables, as Openfire fills them
        n_users = max(2, -(-args.rows // args.rows_per_user))
        users = [f"user{i:05d}" for i in range(n_users)]
        writer = OpenfireWriter(seed=args.seed)
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        recipients = [u for u in users for _ in range(args.rows_per_user)][: args.rows]
        writer.rng.shuffle(recipients)
        oldest, newest = now_ms - WEEK_MS, now_ms - 3_600_000

        def rows() -> Any:
            for i, to_user in enumerate(recipients):
                created = oldest + (newest - oldest) * i // max(1, len(recipients))
                from_user = writer.rng.choice(users)
                yield writer.row(to_user, from_user, created)

        def fill() -> tuple[int, float]:
            with self.pg.connect() as conn:
                copy_users(conn, [(u, f"User {u[4:]}", f"{u}@mail.example") for u in users])
                count = copy_offline(conn, rows())
                avg = conn.execute("SELECT avg(length(stanza)) FROM ofOffline").fetchone()
            self.pg.vacuum_analyze()
            return count, float(avg[0]) if avg and avg[0] is not None else 0.0

        count, avg_len = await asyncio.to_thread(fill)
        sizes = await asyncio.to_thread(self.pg.sizes)
        self.progress(
            f"ofOffline: {count} rows for {n_users} users in "
            f"{time.monotonic() - started:.1f} s (COPY + VACUUM ANALYZE), "
            f"stanzas {avg_len:.0f} chars on average"
        )

        config = make_config(
            workdir=self.workdir,
            openfire_url=self.pg.database_url,
            smtp_port=2525,
            poll_interval=args.poll_interval,
            rule={"delay": args.email_delay, "digest": True, "min_interval": "1h"},
        )
        self.pipeline = pipeline = await Pipeline.build(config)

        # -- the per-poll queries and their alternatives, at exactly --rows rows
        high = writer.next_id - 1
        since_ms = int(time.time() * 1000) - OVERLAP_MS
        alt_results: list[AltResult] = []
        recheck: list[tuple[int, int, list[float]]] = []
        current_plan: list[str] = []
        generic_plan: list[str] = []
        if not args.skip_alternatives:
            self.progress("measuring the per-poll queries and alternatives")
            for alt in alternatives():
                alt_results.append(
                    await measure(pipeline, self.pg, alt, high, since_ms, args.query_runs)
                )
            statement, params = alt_results[0].statements[0]
            current_plan = await asyncio.to_thread(explain, self.pg.conninfo, statement, params)
            generic_plan = await asyncio.to_thread(
                explain, self.pg.conninfo, statement, params, generic=True
            )
            self.current_sql = (statement, params)
            with self.pg.connect() as conn:
                for ddl in INDEX_DDL:
                    conn.execute(ddl)  # type: ignore[arg-type]
                conn.execute("ANALYZE ofOffline")
            for alt in indexed_alternatives():
                alt_results.append(
                    await measure(pipeline, self.pg, alt, high, since_ms, args.query_runs)
                )
            recheck = await measure_recheck(
                pipeline, users, sorted({min(n, len(users)) for n in (RECHECK_PER_POLL, 100, 1000)})
            )
            with self.pg.connect() as conn:
                for ddl in DROP_INDEX_DDL:
                    conn.execute(ddl)  # type: ignore[arg-type]
                conn.execute("VACUUM ANALYZE ofOffline")
        # Whatever ran so far was measurement of queries, not of the watcher.
        pipeline.queries.samples.clear()

        # -- the watcher, idle then under load
        task = asyncio.create_task(pipeline.watcher.run(), name="watcher")
        try:
            await asyncio.wait_for(pipeline.watcher.caught_up.wait(), timeout=30)
            self.progress(
                f"watcher started (poll interval {poll_interval:g} s); idle for "
                f"{args.idle_seconds:g} s"
            )
            idle_start = time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            idle_end = time.monotonic()

            inserter = Inserter(self.pg.conninfo, writer, users, args.rate, args.seconds)
            self.progress(
                f"storing {int(args.rate * args.seconds)} offline messages at "
                f"{args.rate:g}/s for {args.seconds:g} s"
            )
            before = CpuSnapshot.take(self.pg.pid)
            load_start = time.monotonic()
            await asyncio.to_thread(inserter.run)
            load_end = time.monotonic()
            if inserter.error is not None:
                raise inserter.error
            # Every committed message should be picked up within a few polls.
            # Every committed message should be picked up within a few polls; a watcher
            # that fell behind gets until it stops making progress (bounded).
            last_count, last_change = (-1, -1), time.monotonic()
            for _ in range(int(args.drain_timeout / 0.05)):
                found = sum(k in pipeline.ingest.detected for k in inserter.committed)
                if found == len(inserter.committed):
                    break
                progress = (found, len(pipeline.store_queries.samples))  # ingesting counts
                if progress != last_count:
                    last_count, last_change = progress, time.monotonic()
                elif time.monotonic() - last_change > 5 * poll_interval + 10:
                    break
                await asyncio.sleep(0.05)
            after = CpuSnapshot.take(self.pg.pid)
            settle_end = time.monotonic()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        final_rows = (await asyncio.to_thread(self.pg.sizes))["rows"]

        self.report(
            count=count,
            n_users=n_users,
            avg_len=avg_len,
            sizes=sizes,
            final_rows=final_rows,
            poll_interval=poll_interval,
            inserter=inserter,
            idle=(idle_start, idle_end),
            load=(load_start, settle_end),
            load_end=load_end,
            before=before,
            after=after,
            alt_results=alt_results,
            recheck=recheck,
            current_plan=current_plan,
            generic_plan=generic_plan,
        )

    # -- report ------------------------------------------------------------------------

    def report(
        self,
        *,
        count: int,
        n_users: int,
        avg_len: float,
        sizes: dict[str, int],
        final_rows: int,
        poll_interval: float,
        inserter: Inserter,
        idle: tuple[float, float],
        load: tuple[float, float],
        load_end: float,
        before: CpuSnapshot,
        after: CpuSnapshot,
        alt_results: list[AltResult],
        recheck: list[tuple[int, int, list[float]]],
        current_plan: list[str],
        generic_plan: list[str],
    ) -> None:
        args = self.args
        assert self.pipeline is not None
        pipeline = self.pipeline
        detected = pipeline.ingest.detected
        latencies = [detected[k] - t for k, t in inserter.committed.items() if k in detected]
        missing = len(inserter.committed) - len(latencies)
        polls = pipeline.watcher.polls
        idle_polls = [p for p in polls if idle[0] <= p.started and p.finished <= idle[1]]
        load_polls = [p for p in polls if load[0] <= p.started and p.finished <= load[1]]
        offered = len(inserter.committed) / max(1e-9, load_end - load[0])

        o = self.out
        o("")
        o(
            f"ofnotify watcher benchmark — ofOffline {count:,} rows ({n_users:,} users x "
            f"{args.rows_per_user}), new messages at {args.rate:g}/s for {args.seconds:g} s, "
            f"poll interval {args.poll_interval}"
        )
        o(
            f"ofnotify code: {code_version(REPO)}; rule: email digest, delay {args.email_delay}, "
            "min_interval 1h (the example file's); store SQLite; Openfire on PostgreSQL "
            f"{self.pg_version()}, psycopg async driver"
        )
        o(
            f"ofOffline       {count:,} rows at the start, {final_rows:,} at the end; stanzas "
            f"{avg_len:.0f} chars on average; heap {sizes['heap'] / 2**20:.1f} MiB, PK index "
            f"{sizes['indexes'] / 2**20:.1f} MiB"
        )
        o(
            f"inserted        {len(inserter.committed)} messages ({offered:.0f}/s achieved; "
            f"{len(inserter.late)} INSERTs started late"
            + (f", by up to {max(inserter.late) * 1000:.0f} ms" if inserter.late else "")
            + ")"
        )
        o("")
        target = poll_interval * 1000 + TARGET_DETECTION_EXTRA_MS
        p99 = quantiles(latencies, (0.99,))[0] * 1000 if latencies else float("nan")
        o(f"detection       {fmt_ms(latencies)}   INSERT committed → watcher batch committed")
        o(
            f"                target p99 ≤ poll interval + {TARGET_DETECTION_EXTRA_MS:.0f} ms "
            f"= {target:.0f} ms: measured p99 {p99:.0f} ms"
            + (f"; {missing} messages NOT detected" if missing else "; all detected")
        )
        batches = [b for b in pipeline.ingest.batches if b[2] and load[0] <= b[0] <= load[1]]
        if batches:
            busy = sum(b[1] - b[0] for b in batches)
            n_msgs = sum(b[2] for b in batches)
            o(
                f"  ingest        {fmt_ms(b[1] - b[0] for b in batches)}   per batch: Ingest."
                f"watcher into SQLite, {n_msgs / len(batches):.0f} messages per batch on average"
            )
            o(
                f"                {n_msgs / busy if busy else 0:,.0f} messages/s while ingesting "
                f"({busy / n_msgs * 1000 if n_msgs else 0:.2f} ms per message): the watcher's "
                f"ceiling with this rule, against {args.rate:g}/s offered"
            )
        o("")
        o(
            "watcher DB time per poll (last_poll.db_seconds: recent rows + scan slice + missing "
            f"stanzas + still_stored)   [target < {TARGET_DB_MS:.0f} ms at 100,000 rows]"
        )
        for name, group in (("idle", idle_polls), ("under load", load_polls)):
            values = [p.stats.db_seconds for p in group]
            p50, p99v, mx = quantiles(values, (0.5, 0.99, 1.0))
            o(
                f"  {name:<12}  p50 {p50 * 1000:7.1f}  p99 {p99v * 1000:7.1f}  max "
                f"{mx * 1000:7.1f} ms  ({len(values)} polls)"
            )
        if load_polls:
            third = max(1, len(load_polls) // 3)
            first, last = load_polls[:third], load_polls[-third:]
            o(
                "  under load, first third vs last third of the polls: p50 "
                f"{quantiles([p.stats.db_seconds for p in first], (0.5,))[0] * 1000:.1f} ms → "
                f"{quantiles([p.stats.db_seconds for p in last], (0.5,))[0] * 1000:.1f} ms"
            )
            wall = [p.finished - p.started for p in load_polls]
            o(f"  whole poll    {fmt_ms(wall)}   (wall, including Ingest's SQLite commit)")
            o(
                "  where a poll's DB time goes under load (sum per poll: p50 / max ms; the "
                "statements overlap, so they may add up to more than the poll's DB time):"
            )
            parts: dict[str, list[float]] = {}
            rest: list[float] = []
            for poll in load_polls:
                inside = [
                    q
                    for q in pipeline.queries.samples
                    if poll.started <= q.finished <= poll.finished
                    and not q.label.startswith("user_info")
                ]
                for label in {q.label for q in inside} | set(parts):
                    parts.setdefault(label, []).append(
                        sum(q.seconds for q in inside if q.label == label)
                    )
                rest.append(poll.stats.db_seconds - sum(q.seconds for q in inside))
            for label, values in sorted(parts.items()):
                p50, mx = quantiles(values, (0.5, 1.0))
                o(f"    {label:<26} {p50 * 1000:7.1f} / {mx * 1000:7.1f}")
            p50, mx = quantiles(rest, (0.5, 1.0))
            o(
                f"    {'DB time minus the sum above':<26} "
                f"{p50 * 1000:7.1f} / {mx * 1000:7.1f}   (row handling, loop waits, overlap)"
            )
        o(
            "per statement on the Openfire database (SQLAlchemy cursor events; wall time as "
            "the event loop sees it):"
        )
        for name, window, group in (("idle", idle, idle_polls), ("load", load, load_polls)):
            samples = pipeline.queries.between(*window)
            for label, items in sorted(by_label(samples).items()):
                rows = [s.rows for s in items if s.rows >= 0]
                o(
                    f"  {name:<5} {label:<24} {self.dist(items)}  rows/stmt "
                    f"{(sum(rows) / len(rows)) if rows else 0:,.0f} (max {max(rows, default=0):,})"
                )
            if name == "load" and group:
                per_poll = [
                    sum(
                        s.seconds
                        for s in samples
                        if p.started <= s.finished <= p.finished
                        and s.label.startswith(("recent rows", "scan"))
                    )
                    for p in group
                ]
                o(f"  load  recent rows + scan per poll {fmt_ms(per_poll)}")
        store = by_label(pipeline.store_queries.between(*load))
        ingested = len(store.get("insert missed_messages", []))
        if store and ingested:
            total = sum(len(v) for v in store.values())
            seconds = sum(x.seconds for v in store.values() for x in v)
            o(
                f"ofnotify's store (SQLite) under load: {total / ingested:.1f} statements and "
                f"{seconds / ingested * 1000:.2f} ms of statement time per message ingested; the "
                "most frequent (count per message, mean ms):"
            )
            for label, items in sorted(store.items(), key=lambda kv: -len(kv[1]))[:8]:
                mean = sum(x.seconds for x in items) / len(items) * 1000
                o(f"  {len(items) / ingested:6.2f}  {mean:6.2f} ms  {label}")
        o("")
        self.report_plan(current_plan, generic_plan)
        if alt_results:
            o("")
            o(
                f"alternatives (same table, {count:,} rows, X = high-water mark, Y = now - 10 s; "
                f"{args.query_runs} runs each on one held connection after warm-up):"
            )
            for r in alt_results:
                p50, p99v, mx = quantiles(r.times, (0.5, 0.99, 1.0))
                o(
                    f"  {p50 * 1000:7.2f} ms p50 {p99v * 1000:7.2f} p99 {mx * 1000:7.2f} max  "
                    f"rows {r.rows:>3}  {r.alt.name}" + (f"  [{r.alt.note}]" if r.alt.note else "")
                )
                for custom, generic in zip(r.plans, r.generic, strict=True):
                    o(f"           plan: {custom}")
                    if _nodes(generic) != _nodes(custom):
                        o(f"           generic (prepared) plan: {generic}")
        if recheck:
            o("")
            o(
                f"delivery re-check (openfire.still_stored; {RECHECK_PER_POLL} accounts per poll "
                "while any notification is pending), one unread message per account:"
            )
            for n, found, times in recheck:
                p50, mx = quantiles(times, (0.5, 1.0))
                o(
                    f"  {n:>6,} accounts: {found:>7,} rows found, p50 {p50 * 1000:7.1f}  max "
                    f"{mx * 1000:7.1f} ms"
                )
        o("")
        self.lines += cpu_lines(before, after, "this process (watcher + inserter)")

    def report_plan(self, plan: list[str], generic: list[str]) -> None:
        if not plan:
            return
        statement, _ = self.current_sql
        self.out("recent_rows as sent: " + " ".join(statement.split()))
        self.out("EXPLAIN (ANALYZE, BUFFERS), custom plan:")
        for line in plan:
            self.out(f"  {line}")
        if _nodes(plan_summary(generic)) != _nodes(plan_summary(plan)):
            self.out("generic plan (what a prepared statement may switch to):")
            for line in generic:
                self.out(f"  {line}")
        else:
            self.out(f"generic (prepared) plan: same shape — {plan_summary(generic)}")

    @staticmethod
    def dist(items: list[QuerySample]) -> str:
        p50, p99, mx = quantiles([s.seconds for s in items], (0.5, 0.99, 1.0))
        return (
            f"p50 {p50 * 1000:7.2f}  p99 {p99 * 1000:7.2f}  max {mx * 1000:7.2f} ms "
            f"(n={len(items):>4})"
        )

    def pg_version(self) -> str:
        with contextlib.suppress(Exception), self.pg.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]).split()[0] if row else "?"
        return "?"

    async def close(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.close()

    def cleanup(self) -> None:
        self.pg.stop()
        if self.args.keep:
            print(f"kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _nodes(summary: str) -> str:
    return summary.split(";")[0]


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.watcher_poll",
        description="Measure the Openfire watcher's detection latency and database cost "
        "per poll against a private PostgreSQL (measures only; asserts nothing).",
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="ofOffline rows before the run (default 100000)"
    )
    parser.add_argument(
        "--rows-per-user",
        type=int,
        default=20,
        help="offline messages per user in the initial fill (default 20)",
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="new offline messages per second (default 200)"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="how long to store new messages (default 20)"
    )
    parser.add_argument("--poll-interval", default="1s", help="openfire.poll_interval (default 1s)")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="watcher polls with no new messages before the load (default 5)",
    )
    parser.add_argument(
        "--email-delay",
        default="10m",
        help="the email digest rule's delay (default 10m, as in the example "
        "file); pending digests make every poll re-check their accounts",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=180.0,
        help="after the load, wait at most this long for the watcher to "
        "pick up every message (default 180 s)",
    )
    parser.add_argument(
        "--query-runs", type=int, default=30, help="timed runs per query alternative (default 30)"
    )
    parser.add_argument(
        "--skip-alternatives",
        action="store_true",
        help="do not EXPLAIN and time the query alternatives",
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.rows_per_user < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--rows, --rows-per-user, --rate and --seconds must be positive")
    try:
        parse_duration(args.poll_interval)
        parse_duration(args.email_delay)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(WatcherBench(args), args.log_level)


if __name__ == "__main__":
    sys.exit(main())
