"""`ofnotify run` with counters, for `python -m bench.push_throughput --instrument`.

Runs the unmodified CLI after installing observers that change nothing in ofnotify's
behaviour (they only count and time):

- every SQL statement SQLAlchemy sends, by statement shape, with its wall time from
  the greenlet's point of view (which includes waiting for the aiosqlite thread);
- transactions committed, pool checkouts, DBAPI connections opened;
- aiosqlite thread hand-offs (each one is a call into the connection's worker thread
  and a `call_soon_threadsafe` back to the event loop);
- CPU time per thread, grouped by thread name;
- wall time per call of the pipeline's stages (publish handling, committer, claim,
  compose, FCM send, outcome recording, pool checkout) and committer batch sizes.

On SIGUSR1 a snapshot is written to $OFNOTIFY_BENCH_SNAPSHOTS/snapshot-<k>.json, so the
benchmark can take the difference over exactly its measured window.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

statements: Counter[str] = Counter()
statement_seconds: Counter[str] = Counter()
events: Counter[str] = Counter()
# label -> [calls, total seconds, max seconds]
timers: dict[str, list[float]] = {}
batch_sizes: Counter[int] = Counter()

# (module, class, method, label): wall time per call, measured around the coroutine or
# function. Missing names are skipped, so the list survives refactoring.
TIMED = (
    ("component.appserver", "AppServer", "_publish", "AppServer._publish: publish IQ → reply sent"),
    (
        "component.appserver",
        "AppServer",
        "_fast_publish",
        "AppServer._fast_publish: publish element → reply queued",
    ),
    ("component.ingest", "Ingest", "publish", "Ingest.publish: policy + committer.run"),
    (
        "component.committer",
        "GroupCommitter",
        "run",
        "GroupCommitter.run: queue wait + batch transaction",
    ),
    (
        "component.committer",
        "GroupCommitter",
        "_commit",
        "GroupCommitter._commit: one batch transaction",
    ),
    ("component.dispatcher", "Dispatcher", "_claim", "Dispatcher._claim"),
    ("component.dispatcher", "Dispatcher", "_sleep_until_due", "Dispatcher._sleep_until_due"),
    (
        "component.dispatcher",
        "Dispatcher",
        "_deliver",
        "Dispatcher._deliver: compose + send + record",
    ),
    ("component.compose", "Composer", "compose", "Composer.compose (inside its transaction)"),
    ("notifiers.fcm", "FcmNotifier", "send", "FcmNotifier.send: executor queue + HTTP"),
    (
        "notifiers.fcm",
        "FcmNotifier",
        "_send_blocking",
        "FcmNotifier._send_blocking: in the worker thread",
    ),
    ("component.dispatcher", "Dispatcher", "_record", "Dispatcher._record: committer.run"),
    (
        "sqlalchemy.pool.impl",
        "AsyncAdaptedQueuePool",
        "_do_get",
        "pool checkout (waits when all connections are out)",
    ),
    ("component.outbox", None, "enqueue", "outbox.enqueue (inside a committer batch)"),
    (
        "sqlalchemy.ext.asyncio.session",
        "AsyncSessionTransaction",
        "commit",
        "AsyncSessionTransaction.commit (COMMIT, incl. WAL checkpoints)",
    ),
    ("aiosqlite.core", "Connection", "commit", "aiosqlite Connection.commit (sqlite COMMIT)"),
)

# Event-loop lag: how late a 10 ms sleep wakes up. Every hand-off to the aiosqlite
# thread and back costs at least one such wake-up.
lag_ms: list[float] = []
_thread_names: dict[int, str] = {}
_lock = threading.Lock()
_snapshots = 0


def shape(sql: str) -> str:
    """A statement's shape: verb, table and the start of what it does."""
    text = " ".join(sql.split())
    match = re.match(r"(INSERT INTO \w+|UPDATE \w+ SET \w+|DELETE FROM \w+)", text)
    if match:
        return match.group(1)
    if text.startswith("SELECT"):
        where = re.search(r" FROM (\w+)", text)
        what = text[7:40].split(" FROM")[0]
        return f"SELECT {what.strip()}… FROM {where.group(1) if where else '?'}"
    return text[:50]


def install() -> None:
    import aiosqlite.core
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info["bench_started"].pop()
        key = shape(statement)
        statements[key] += 1
        statement_seconds[key] += time.perf_counter() - started

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        events["transactions committed"] += 1

    @event.listens_for(Engine, "rollback")
    def _rollback(conn: Any) -> None:
        events["transactions rolled back (incl. read-only session ends)"] += 1

    @event.listens_for(Pool, "checkout")
    def _checkout(*args: Any) -> None:
        events["pool checkouts"] += 1

    @event.listens_for(Pool, "connect")
    def _connect(*args: Any) -> None:
        events["DBAPI connections opened"] += 1

    original_execute = aiosqlite.core.Connection._execute

    async def _execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        events["aiosqlite thread hand-offs"] += 1
        return await original_execute(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = _execute  # type: ignore[method-assign]

    for module_name, class_name, method, label in TIMED:
        _time(module_name, class_name, method, label)
    _watch_loop_lag()
    _watch_gc()

    threading.Thread(target=_watch_threads, name="bench-thread-watch", daemon=True).start()
    signal.signal(signal.SIGUSR1, _on_usr1)


def _add(label: str, seconds: float) -> None:
    with _lock:
        entry = timers.setdefault(label, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += seconds
        entry[2] = max(entry[2], seconds)


def _time(module_name: str, class_name: str, method: str, label: str) -> None:
    import functools
    import importlib
    import inspect

    try:
        module = importlib.import_module(module_name)
        cls: Any = getattr(module, class_name) if class_name else module
        original = getattr(cls, method)
    except (ImportError, AttributeError):
        return
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            if method == "_commit" and len(args) > 1:
                batch_sizes[len(args[1])] += 1
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                _add(label, time.perf_counter() - started)

        setattr(cls, method, timed_async)
    else:

        @functools.wraps(original)
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _add(label, time.perf_counter() - started)

        setattr(cls, method, timed_sync)


def _watch_loop_lag() -> None:
    import asyncio

    from component.service import Service

    original = Service.run

    async def run(self: Any) -> int:
        async def monitor() -> None:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                lag_ms.append((time.perf_counter() - started - 0.01) * 1000)

        task = asyncio.create_task(monitor(), name="bench-loop-lag")
        try:
            return await original(self)
        finally:
            task.cancel()

    Service.run = run  # type: ignore[method-assign]


def _watch_gc() -> None:
    """Time every cyclic garbage collection (the pipeline allocates a lot)."""
    import gc

    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            _add(
                f"garbage collection, generation {info['generation']}",
                time.perf_counter() - started.pop(),
            )

    gc.callbacks.append(callback)


def _watch_threads() -> None:
    # Thread names are only known inside the process; /proc knows the CPU times.
    while True:
        with _lock:
            for thread in threading.enumerate():
                if thread.native_id is not None:
                    _thread_names[thread.native_id] = thread.name
        time.sleep(0.2)


def _thread_group(name: str) -> str:
    if name.startswith("fcm-"):
        return "FCM worker threads (pyfcm, libcurl)"
    if name == "MainThread":
        return "main thread (event loop, SQLAlchemy, slixmpp)"
    if name.startswith("bench-"):
        return "bench watcher (not ofnotify)"
    if name.startswith("Thread-") or name.startswith("asyncio_"):
        return "other threads (aiosqlite connections, default executor)"
    return name


def thread_cpu() -> dict[str, float]:
    groups: Counter[str] = Counter()
    main = os.getpid()
    with _lock:
        names = dict(_thread_names)
    for entry in os.scandir(f"/proc/{main}/task"):
        tid = int(entry.name)
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        name = "MainThread" if tid == main else names.get(tid, "Thread-unknown")
        groups[_thread_group(name)] += seconds
    return dict(groups)


def snapshot() -> dict[str, Any]:
    return {
        "at": time.monotonic(),
        "statements": dict(statements),
        "statement_seconds": dict(statement_seconds),
        "events": dict(events),
        "thread_cpu": thread_cpu(),
        "timers": {k: list(v) for k, v in timers.items()},
        "batch_sizes": dict(batch_sizes),
        "lag_samples": len(lag_ms),
        "lag_ms": lag_ms[-20000:],
    }


def _on_usr1(signum: int, frame: Any) -> None:
    global _snapshots
    _snapshots += 1
    directory = Path(os.environ.get("OFNOTIFY_BENCH_SNAPSHOTS", "."))
    target = directory / f"snapshot-{_snapshots}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot()))
    tmp.rename(target)


def main() -> None:
    install()
    from component.cli import main as cli

    sys.argv[0] = "ofnotify"
    cli()


if __name__ == "__main__":
    main()
