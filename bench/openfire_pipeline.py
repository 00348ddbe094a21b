"""Shared by the watcher and email benchmarks: Openfire's tables in a private PostgreSQL,
filled the way Openfire fills them, and ofnotify's real in-process pipeline on top.

Nothing here changes ofnotify: `TimedIngest` and `TimedWatcher` subclass the real
classes only to timestamp what they already do, and `QueryTimer` listens to SQLAlchemy's
cursor events on the Openfire engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import yaml
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench.stats import percentile
from component.committer import GroupCommitter
from component.config import Config, parse_config
from component.ingest import Ingest, WatcherBatch
from component.policy import Policy
from component.service import tune_garbage_collector
from component.store import create_schema, make_engine, make_sessionmaker
from component.watcher import PollStats, Watcher
from tests.support.openfire_db import OPENFIRE_TABLES, chat_stanza, of_date
from tests.support.postgres import PostgresServer

DOMAIN = "example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------- figures


def fmt_ms(values_s: Iterable[float], qs: Sequence[tuple[str, float]] | None = None) -> str:
    """`p50 … p95 … p99 … max …` in milliseconds, from seconds."""
    qs = qs or (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
    s = sorted(v * 1000 for v in values_s)
    if not s:
        return "n/a"
    return "  ".join(f"{name} {percentile(s, q):7.1f}" for name, q in qs) + f"  ms (n={len(s)})"


def code_version(repo: Path) -> str:
    """The commit measured, and whether ofnotify's own files differ from it."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "component", "notifiers"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = len(dirty.splitlines())
    return head + (f" + {changed} uncommitted file(s) in component/, notifiers/" if changed else "")


# --------------------------------------------------------------------------- machine


def _process_tree_cpu(root: int) -> float:
    """CPU of a process and its live children (PostgreSQL backends call setsid(), so
    they are not in the postmaster's process group)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state(3) ppid(4) ... utime(14) stime(15).
        if int(entry.name) == root or int(stat[1]) == root:
            total += (int(stat[11]) + int(stat[12])) / CLK_TCK
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    bench: float  # this process: ofnotify's pipeline, the load generator, SMTP server
    postgres: float
    machine_busy: float
    loadavg: tuple[float, float, float]

    @classmethod
    def take(cls, postgres_pid: int | None) -> CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            at=time.monotonic(),
            bench=usage.ru_utime + usage.ru_stime,
            postgres=_process_tree_cpu(postgres_pid) if postgres_pid else 0.0,
            machine_busy=_machine_busy()[0],
            loadavg=os.getloadavg(),
        )


def cpu_lines(before: CpuSnapshot, after: CpuSnapshot, bench_label: str) -> list[str]:
    window = after.at - before.at
    if window <= 0:
        return []
    cores = os.cpu_count() or 1
    ours = after.bench - before.bench
    pg = after.postgres - before.postgres
    busy = after.machine_busy - before.machine_busy
    others = max(0.0, busy - ours - pg)

    def pct(seconds: float) -> str:
        return f"{seconds:6.2f} s = {seconds / window * 100:5.1f}% of a core"

    return [
        f"CPU over the {window:.1f} s measured ({cores} cores):",
        f"  {bench_label:<34} {pct(ours)}",
        f"  {'PostgreSQL (live backends)':<34} {pct(pg)}",
        f"  {'everything else on the machine':<34} {pct(others)}",
        f"load average    {' '.join(f'{x:.2f}' for x in before.loadavg)} before, "
        f"{' '.join(f'{x:.2f}' for x in after.loadavg)} after"
        + ("   (the machine was busy with other work)" if others / window > 0.25 else ""),
    ]


# --------------------------------------------------------------------------- PostgreSQL


class OpenfirePostgres:
    """A throwaway PostgreSQL cluster holding an `openfire` database with Openfire's DDL."""

    def __init__(self, workdir: Path) -> None:
        # The cluster runs as the postgres user, which must traverse the directory.
        self.dir = Path(tempfile.mkdtemp(prefix="ofn-bench-pg-"))
        self.server = PostgresServer(self.dir)
        self.workdir = workdir

    def start(self) -> None:
        self.server.start()
        self.server.create_database("openfire")
        with self.connect() as conn:
            conn.execute(OPENFIRE_TABLES)  # type: ignore[arg-type]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The postmaster (setpriv execs in place, so Popen's pid is postgres itself)."""
        proc = self.server._proc
        return proc.pid if proc is not None else None

    @property
    def conninfo(self) -> str:
        return self.server.url("openfire", driver=None)

    @property
    def database_url(self) -> str:
        """What an operator writes in `openfire.database_url`."""
        return self.server.url("openfire", driver=None)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True)

    def vacuum_analyze(self) -> None:
        with self.connect() as conn:
            conn.execute("VACUUM ANALYZE ofOffline")
            conn.execute("VACUUM ANALYZE ofUser")
            conn.execute("VACUUM ANALYZE ofPresence")

    def sizes(self) -> dict[str, int]:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*), pg_relation_size('ofoffline'), pg_indexes_size('ofoffline'),"
                " pg_total_relation_size('ofoffline') FROM ofOffline"
            ).fetchone()
        assert row is not None
        return {"rows": row[0], "heap": row[1], "indexes": row[2], "total": row[3]}


# --------------------------------------------------------------------------- Openfire's rows


RESOURCES = ("Conversations.x7Qa", "gajim.K2P9", "Spark", "Monal-iOS.3f1c", "desk")
WORDS_TEXT = (
    "the meeting moved to three, can you bring the slides and the numbers from last week "
    "sure I will be there a bit late because of traffic on the bridge again thanks for "
    "letting me know please send the document before lunch so that we can review it"
)


class OpenfireWriter:
    """Writes ofOffline rows as Openfire does (FACTS.md): IDs increase in blocks with
    jumps, 15-character epoch-millisecond dates, stanzas in Openfire's attribute order
    without the jabber:client namespace, messageSize in UTF-16 units."""

    BLOCK = 50  # Openfire's SequenceManager hands out IDs in blocks

    def __init__(self, domain: str = DOMAIN, seed: int = 3) -> None:
        self.domain = domain
        self.rng = random.Random(seed)
        self.next_id = 1

    def take_id(self) -> int:
        message_id = self.next_id
        self.next_id += 1
        if self.next_id % self.BLOCK == 0 and self.rng.random() < 0.1:
            self.next_id += self.BLOCK  # a node restarted or another node took a block
        return message_id

    def body(self) -> str:
        n = self.rng.randint(4, 20)
        words_all = WORDS_TEXT.split(" ")
        start = self.rng.randrange(len(words_all))
        words = [words_all[(start + i) % len(words_all)] for i in range(n)]
        return " ".join(words).capitalize()

    def stanza(self, to_user: str, from_user: str, body: str | None = None) -> str:
        origin = str(uuid.UUID(int=self.rng.getrandbits(128)))
        extra = (
            '<markable xmlns="urn:xmpp:chat-markers:0"/>'
            f'<origin-id xmlns="urn:xmpp:sid:0" id="{origin}"/>'
        )
        return chat_stanza(
            f"{to_user}@{self.domain}",
            f"{from_user}@{self.domain}/{self.rng.choice(RESOURCES)}",
            body if body is not None else self.body(),
            origin,
            extra=extra,
        )

    def row(
        self, to_user: str, from_user: str, created_ms: int, body: str | None = None
    ) -> tuple[str, int, str, int, str]:
        stanza = self.stanza(to_user, from_user, body)
        size = len(stanza.encode("utf-16-le")) // 2
        return (to_user, self.take_id(), of_date(created_ms), size, stanza)


def copy_users(
    conn: psycopg.Connection[Any],
    users: Sequence[tuple[str, str, str | None]],
    offline: bool = True,
) -> None:
    """ofUser rows (username, name, email), and ofPresence rows: they are offline."""
    now = of_date()
    with conn.cursor() as cur:
        with cur.copy(
            "COPY ofUser (username, plainPassword, name, email, creationDate, "
            "modificationDate) FROM STDIN"
        ) as copy:
            for username, name, email in users:
                copy.write_row((username, "pw", name, email, now, now))
        if offline:
            with cur.copy(
                "COPY ofPresence (username, offlinePresence, offlineDate) FROM STDIN"
            ) as copy:
                for username, _, _ in users:
                    copy.write_row((username, None, now))


def copy_offline(
    conn: psycopg.Connection[Any], rows: Iterable[tuple[str, int, str, int, str]]
) -> int:
    count = 0
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY ofOffline (username, messageID, creationDate, messageSize, stanza) FROM STDIN"
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


INSERT_OFFLINE = (
    "INSERT INTO ofOffline (username, messageID, creationDate, messageSize, stanza) "
    "VALUES (%s, %s, %s, %s, %s)"
)


# --------------------------------------------------------------------------- the pipeline


class TimedIngest(Ingest):
    """The real Ingest; remembers when each watcher batch was committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.detected: dict[str, float] = {}  # source key → monotonic commit time
        self.batches: list[tuple[float, float, int]] = []  # (started, committed, messages)

    async def watcher(self, batch: WatcherBatch, watcher_id: int = 1) -> list[int]:
        started = time.monotonic()
        ids = await super().watcher(batch, watcher_id)
        committed = time.monotonic()
        for seen in batch.messages:
            self.detected.setdefault(seen.source_key, committed)
        self.batches.append((started, committed, len(batch.messages)))
        return ids


@dataclass
class PollRecord:
    started: float
    finished: float
    stats: PollStats


class TimedWatcher(Watcher):
    """The real Watcher; keeps every poll's statistics, not only the last."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls: list[PollRecord] = []

    async def poll(self) -> PollStats:
        started = time.monotonic()
        stats = await super().poll()
        self.polls.append(PollRecord(started, time.monotonic(), stats))
        return stats


_PARAM = re.compile(r"%\((\w+)\)s")


def label_store_statement(statement: str) -> str:
    """ofnotify's own store: verb and table."""
    words = " ".join(statement.split()).lower().replace('"', "").split(" ")
    verb = words[0] if words else "?"
    table = "?"
    for marker in ("into", "update", "from"):
        if marker in words and words.index(marker) + 1 < len(words):
            table = words[words.index(marker) + 1].strip("(")
            break
    return f"{verb} {table}"


def label_statement(statement: str) -> str:
    s = " ".join(statement.split()).lower()
    if s.startswith(("set ", "explain", "select 1")) or s == "select 1":
        return "other"
    if "max(ofoffline.messageid)" in s:
        return "max_message_id"
    if "from ofuser" in s:
        return "user_info (ofUser)"
    if "from ofpresence" in s:
        return "is_offline (ofPresence)"
    if "pg_relation_size" in s:
        return "scan: heap size"
    if "from ofoffline" in s:
        if "case when" in s:
            return "recent rows (ID window)"
        if "ctid" in s:
            return "scan: slice of blocks"
        if "order by" in s:
            return "scan: username bound"
        if "ofoffline.username >" in s:
            return "scan: username slice"
        if "ofoffline.stanza" in s:
            return "stanzas (keys without)"
        if " or " in s:
            return "id OR date (before)"
        if "ofoffline.messageid in" in s:
            return "still_stored (recheck)"
        if "ofoffline.username in" in s:
            return "present_keys (send time)"
        return "ofOffline other"
    return "other"


@dataclass
class QuerySample:
    finished: float
    label: str
    seconds: float
    rows: int


@dataclass
class QueryTimer:
    """Per-statement wall time on an engine, from SQLAlchemy's cursor events (as the
    event loop sees it: a busy loop adds to it)."""

    samples: list[QuerySample] = field(default_factory=list)
    last: dict[str, tuple[str, Any]] = field(default_factory=dict)  # label → (sql, params)
    enabled: bool = True
    labeller: Any = label_statement

    def attach(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "before_cursor_execute", self._before)
        event.listen(engine.sync_engine, "after_cursor_execute", self._after)

    def _before(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        started = conn.info["bench_started"].pop()
        if not self.enabled:
            return
        seconds = time.perf_counter() - started
        label = self.labeller(statement)
        rowcount = getattr(cursor, "rowcount", -1)
        self.samples.append(QuerySample(time.monotonic(), label, seconds, rowcount))
        self.last[label] = (statement, parameters)

    def between(self, start: float, end: float) -> list[QuerySample]:
        return [s for s in self.samples if start <= s.finished <= end]


def by_label(samples: Iterable[QuerySample]) -> dict[str, list[QuerySample]]:
    out: dict[str, list[QuerySample]] = defaultdict(list)
    for s in samples:
        out[s.label].append(s)
    return out


def make_config(
    *,
    workdir: Path,
    openfire_url: str,
    smtp_port: int,
    poll_interval: str,
    rule: dict[str, Any],
    batch_size: int | None = None,
) -> Config:
    data: dict[str, Any] = {
        "xmpp": {"jid": f"notify.{DOMAIN}", "secret": "bench-secret"},
        "storage": {"url": f"sqlite:///{workdir / 'ofnotify.db'}"},
        "channels": {
            "mail": {
                "type": "email",
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "sender": f"Chat <chat@{DOMAIN}>",
                "timeout": "10s",
            }
        },
        "rules": [{"event": "offline_message", "channel": "mail", **rule}],
        "openfire": {
            "database_url": openfire_url,
            "domain": DOMAIN,
            "poll_interval": poll_interval,
        },
    }
    if batch_size:
        data["delivery"] = {"batch_size": batch_size}
    return parse_config(yaml.safe_dump(data, sort_keys=False), "<bench>")


@dataclass
class Pipeline:
    """ofnotify's pieces wired as component/service.py wires them (minus XMPP)."""

    config: Config
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    committer: GroupCommitter
    openfire_engine: AsyncEngine
    ingest: TimedIngest
    watcher: TimedWatcher
    queries: QueryTimer  # on the Openfire database
    store_queries: QueryTimer  # on ofnotify's own store

    @classmethod
    async def build(cls, config: Config, on_enqueued: Any = None) -> Pipeline:
        assert config.openfire is not None
        tune_garbage_collector()  # as service.py does at start
        engine = make_engine(config.storage.url)
        await create_schema(engine)
        sessionmaker = make_sessionmaker(engine)
        committer = GroupCommitter(sessionmaker)
        committer.start()
        openfire_engine = make_engine(config.openfire.database_url, pre_ping=False)  # as service.py
        queries = QueryTimer()
        queries.attach(openfire_engine)
        store_queries = QueryTimer(labeller=label_store_statement)
        store_queries.attach(engine)
        ingest = TimedIngest(
            committer,
            Policy(config),
            on_enqueued or (lambda: None),
            include_body=config.privacy.include_body,
        )
        watcher = TimedWatcher(config.openfire, openfire_engine, sessionmaker, ingest)
        return cls(
            config,
            engine,
            sessionmaker,
            committer,
            openfire_engine,
            ingest,
            watcher,
            queries,
            store_queries,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.committer.stop()
        await self.engine.dispose()
        await self.openfire_engine.dispose()


# --------------------------------------------------------------------------- EXPLAIN


def explain(
    conninfo: str,
    statement: str,
    params: Any,
    *,
    settings: Sequence[str] = (),
    generic: bool = False,
) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement as SQLAlchemy sent it (pyformat
    parameters with rendered casts). `generic`: the plan PostgreSQL would cache for a
    prepared statement (psycopg prepares a query after 5 executions)."""
    with psycopg.connect(conninfo) as conn, conn.transaction():
        for setting in settings:
            conn.execute(setting)  # type: ignore[arg-type]
        if not generic:
            rows = conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS) {statement}",
                params,  # type: ignore[arg-type]
            ).fetchall()
            return [r[0] for r in rows]
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        prepared = _PARAM.sub(number, statement)
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE bench_generic AS {prepared}")  # type: ignore[arg-type]
        args = sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
        execute = "EXECUTE bench_generic" + (" ({})" if names else "")
        query = sql.SQL(f"EXPLAIN (ANALYZE, BUFFERS) {execute}").format(args)  # type: ignore[arg-type]
        rows = conn.execute(query).fetchall()
        conn.execute("DEALLOCATE bench_generic")
        return [r[0] for r in rows]


def plan_summary(lines: Sequence[str]) -> str:
    """The top plan nodes, the first Buffers line and the execution time, on one line."""
    nodes = [ln.strip().lstrip("-> ").split("  (")[0] for ln in lines if "(cost=" in ln][:3]
    buffers = next((ln.strip() for ln in lines if ln.strip().startswith("Buffers:")), "")
    execution = next((ln.strip() for ln in lines if ln.startswith("Execution Time")), "")
    return " / ".join(nodes) + (f"; {buffers}" if buffers else "") + f"; {execution}"


class Bench(Protocol):
    """What `run_bench` drives: the watcher and digest benchmarks."""

    lines: list[str]

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def cleanup(self) -> None: ...


def run_bench(bench: Bench, log_level: str) -> int:
    """Run, close, clean up (also on Ctrl-C), then print the report; the exit code."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")

    async def go() -> None:
        try:
            await bench.run()
        finally:
            await bench.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
    print("\n".join(bench.lines), flush=True)
    return 0
