"""Condense a py-spy profile in collapsed-stack form into tables.

    python -m bench.profile_summary FILE [--top 25] [--thread main|fcm|aiosqlite|all]

FILE is what `python -m bench.push_throughput --profile FILE` records (py-spy
`--format raw --threads`: one line per distinct stack, the thread as first frame).
Shares are of all samples of the selected threads. Samples whose innermost frame is
a known blocking wait (the event loop's select, a worker's queue get, a socket read)
count as "waiting" and are left out of the function tables: py-spy's own idle
detection does not recognise them.

SQLAlchemy's asyncio layer runs ORM code in greenlets; py-spy shows such a stack
from the greenlet's entry point (Session.execute, Session.get, ...) without the
coroutine that awaited it, so the inclusive table under-attributes component/
functions that use the database; `--instrument` counts statements per caller shape.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+|0x[0-9A-Fa-f]+)\)(?:: (?P<name>.*))?$")

PACKAGES = (
    ("component/", "component (ofnotify)"),
    ("notifiers/", "notifiers (ofnotify)"),
    ("sqlalchemy/", "sqlalchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("sqlite3/", "sqlite3"),
    ("slixmpp/", "slixmpp"),
    ("pyfcm/", "pyfcm"),
    ("requests/", "requests"),
    ("urllib3/", "urllib3"),
    ("google/", "google-auth"),
    ("http/", "http (stdlib)"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "concurrent.futures"),
    ("threading.py", "threading"),
    ("xml/", "xml (stdlib)"),
    ("socket.py", "socket"),
    ("selectors.py", "selectors"),
    ("email/", "email (stdlib)"),
    ("typing.py", "typing"),
    ("uuid.py", "uuid"),
    ("weakref.py", "weakref"),
    ("copy.py", "copy"),
    ("pydantic", "pydantic"),
    ("greenlet", "greenlet"),
)

# Innermost frames that mean "blocked, not computing".
WAITS = (
    "EpollSelector.select (selectors.py",
    "_connection_worker_thread (aiosqlite/core.py",  # SimpleQueue.get() between calls
    "_worker (concurrent/futures/thread.py",  # work_queue.get() between tasks
    "Condition.wait (threading.py",
    "SocketIO.readinto (socket.py",  # waiting for the HTTP answer
    "poll_wait_for_socket.<locals>.do_poll (urllib3/util/wait.py",
    "Thread._wait_for_tstate_lock (threading.py",
)


@dataclass
class Stack:
    tid: str
    thread: str
    frames: list[str]
    count: int


def package_of(frame: str) -> str:
    match = FRAME.match(frame)
    path = match["file"] if match else frame
    for needle, name in PACKAGES:
        if needle in path:
            return name
    return Path(path).name or "(native or unknown)"


def short(frame: str, *, lines: bool = False) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame or "(native or unknown)"
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    where = f"{path}:{match['line']}" if lines and match["line"] else path
    return f"{match['func']} ({where})"


def load(path: Path) -> list[Stack]:
    stacks = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        frames_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = frames_text.split(";")
        tid, name = "?", "?"
        match = THREAD.match(frames[0])
        if match:
            tid, name = match["tid"], match["name"] or match["tid"]
            frames = frames[1:]
        stacks.append(Stack(tid, name, frames, int(count)))
    return stacks


def thread_kind(name: str) -> str:
    if name == "MainThread":
        return "main"
    if name.startswith("fcm-"):
        return "fcm"
    if "_connection_worker_thread" in name:
        return "aiosqlite"
    return "other"


KIND_LABELS = {
    "main": "main thread (event loop: slixmpp, SQLAlchemy ORM, asyncio)",
    "fcm": "FCM worker threads (pyfcm, libcurl)",
    "aiosqlite": "aiosqlite connection threads (sqlite3)",
    "other": "other threads",
}


# Main-thread activities, first match wins; each rule is (label, substrings of which
# any one must occur in the stack). Greenlet stacks (SQLAlchemy's sync ORM code under
# asyncio) start at the ORM call, so they are recognised by ORM internals.
ACTIVITIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "aiosqlite hand-off: GIL/queue wait at the thread boundary",
        ("@leaf:Connection._execute (aiosqlite/core.py",),
    ),
    (
        "asyncio self-pipe wake-ups (call_soon_threadsafe from worker threads)",
        (
            "@leaf:BaseSelectorEventLoop._read_from_self",
            "@leaf:BaseSelectorEventLoop._write_to_self",
        ),
    ),
    ("logging", ("(logging/",)),
    (
        "committer: outbox INSERT (Ingest.publish work → outbox.enqueue)",
        ("Ingest.publish.<locals>.work", "enqueue (component/outbox.py", "_BulkORMInsert"),
    ),
    (
        "committer: outcome UPDATE + delivery_log INSERT (Dispatcher._record work)",
        ("Dispatcher._record.<locals>.work", "_BulkORMUpdate", "Session._flush", "Session.flush"),
    ),
    (
        "compose: registration lookup (Composer → session.get)",
        ("Composer.", "Session.get (", "_load_on_pk_identity"),
    ),
    (
        "dispatcher: claim / next due / lease renewal",
        (
            "Dispatcher._claim",
            "claim_due",
            "next_due_at",
            "Dispatcher._sleep_until_due",
            "renew_leases",
        ),
    ),
    (
        "SQLAlchemy sessions, transactions, pool checkout (begin/commit/close)",
        (
            "GroupCommitter._commit",
            "Session.commit",
            "Session.close",
            "SessionTransaction",
            "AsyncSession.",
            "Pool.",
            "pool/",
            "TransactionalContext",
            "Session.begin",
            "Dispatcher._deliver",
        ),
    ),
    (
        "XEP-0357 publish handling (AppServer, parse_publish, node cache, policy)",
        ("AppServer.", "parse_publish", "Policy.", "NodeCache"),
    ),
    (
        "XMPP input: expat parsing, slixmpp stanza objects and handler matching",
        ("XMLStream.data_received", "slixmpp/"),
    ),
    ("FCM hand-off to the executor", ("FcmNotifier.send", "run_in_executor")),
)


def activity(frames: Sequence[str]) -> str:
    leaf = frames[-1] if frames else ""
    if not leaf:
        return "no Python frame (native code, greenlet switches)"
    text = ";".join(frames)
    for label, needles in ACTIVITIES:
        for needle in needles:
            if needle.startswith("@leaf:"):
                if leaf.startswith(needle[len("@leaf:") :]):
                    return label
            elif needle in text:
                return label
    if "asyncio/" in leaf or "(asyncio/" in text:
        return "asyncio scheduling and other event-loop work"
    if "sqlalchemy/" in text:
        return "SQLAlchemy statement building / ORM loading (greenlet; caller not visible)"
    return "other"


def is_wait(frames: Sequence[str]) -> bool:
    return bool(frames) and frames[-1].startswith(WAITS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--thread",
        choices=["main", "fcm", "aiosqlite", "other", "all"],
        default="main",
        help="threads for the function tables (default main)",
    )
    parser.add_argument("--lines", action="store_true", help="keep line numbers")
    args = parser.parse_args(argv)
    stacks = load(args.file)
    total_all = sum(s.count for s in stacks)
    if not total_all:
        print("no samples", file=sys.stderr)
        return 1

    print(f"{args.file}: {total_all} samples")
    print("\nby thread kind (busy = not in a known blocking wait)")
    busy_by_kind: Counter[str] = Counter()
    wait_by_kind: Counter[str] = Counter()
    threads_by_kind: dict[str, set[str]] = {}
    for s in stacks:
        kind = thread_kind(s.thread)
        threads_by_kind.setdefault(kind, set()).add(s.tid)
        (wait_by_kind if is_wait(s.frames) else busy_by_kind)[kind] += s.count
    for kind in sorted(threads_by_kind, key=lambda k: -busy_by_kind[k]):
        busy, wait = busy_by_kind[kind], wait_by_kind[kind]
        print(
            f"  {busy / total_all * 100:5.1f}% busy  {wait / total_all * 100:5.1f}% waiting  "
            f"{KIND_LABELS[kind]} ({len(threads_by_kind[kind])} thread ids)"
        )

    chosen = [
        s
        for s in stacks
        if (args.thread == "all" or thread_kind(s.thread) == args.thread) and not is_wait(s.frames)
    ]
    total = sum(s.count for s in chosen)
    if not total:
        return 0
    own_pkg: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    for s in chosen:
        leaf = s.frames[-1] if s.frames else ""
        own_pkg[package_of(leaf)] += s.count
        own_fn[short(leaf, lines=args.lines)] += s.count
        names = {short(f, lines=args.lines) for f in s.frames}
        for name in names:
            incl_fn[name] += s.count
            if "(component/" in name or "(notifiers/" in name:
                incl_ours[name] += s.count

    def table(title: str, counter: Counter[str], top: int) -> None:
        print(f"\n{title}")
        for name, count in counter.most_common(top):
            print(f"  {count / total * 100:5.1f}%  {count:7d}  {name}")

    if args.thread == "main":
        activities: Counter[str] = Counter()
        for st in chosen:
            activities[activity(st.frames)] += st.count
        print(f"\nmain thread by activity, busy samples only ({total})")
        for name, count in activities.most_common():
            print(f"  {count / total * 100:5.1f}%  {count:7d}  {name}")

    label = "all threads" if args.thread == "all" else KIND_LABELS[args.thread]
    print(f"\nfunction tables: {label}, busy samples only ({total})")
    table("own time by package", own_pkg, 20)
    table("own time by function", own_fn, args.top)
    table("inclusive time, ofnotify's own functions (component/, notifiers/)", incl_ours, args.top)
    table("inclusive time, all functions", incl_fn, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
