"""Condense a py-spy profile in collapsed-stack form ("raw") into tables.

    python -m bench.profile_summary FILE [--top 25] [--focus SUBSTRING]

Prints, as shares of all samples: the root of each stack (which thread kind: the event
loop or an executor worker), the packages the samples spend their own time in, the
functions with the most own ("self") time, and the functions with the most inclusive
time (counted once per stack). `--focus` keeps only stacks passing through a frame
that contains SUBSTRING (e.g. `_deliver`, `on_publish`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# "function (path/to/file.py:123)" -> name and file; py-spy --threads adds a root frame.
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")

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
    ("http/client", "http.client"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "concurrent.futures"),
    ("threading.py", "threading"),
    ("xml/", "xml (stdlib)"),
    ("socket.py", "socket"),
    ("ssl.py", "ssl"),
    ("email/", "email (stdlib)"),
    ("typing.py", "typing"),
    ("uuid.py", "uuid"),
    ("pydantic", "pydantic"),
)


def package_of(path: str) -> str:
    for needle, name in PACKAGES:
        if needle in path:
            return name
    return Path(path).name or path


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def file_of(frame: str) -> str:
    match = FRAME.match(frame)
    return match["file"] if match else frame


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append((frames.split(";"), int(count)))
    return stacks


def thread_kind(frames: Sequence[str]) -> str:
    text = ";".join(frames)
    if "_worker (concurrent/futures/thread.py" in text or "concurrent/futures/thread.py" in text:
        if "fcm" in text.lower() or "pyfcm" in text:
            return "executor worker (FCM send)"
        if "aiosqlite" in text:
            return "aiosqlite connection thread"
        return "executor worker (other)"
    if "aiosqlite" in text and "run (aiosqlite" in text:
        return "aiosqlite connection thread"
    if "run_forever" in text or "asyncio/runners.py" in text or "asyncio/base_events.py" in text:
        return "event loop (main thread)"
    return "other"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--focus", default=None)
    args = parser.parse_args(argv)
    stacks = load(args.file)
    if args.focus:
        stacks = [(f, c) for f, c in stacks if any(args.focus in x for x in f)]
    total = sum(c for _, c in stacks)
    if not total:
        print("no samples", file=sys.stderr)
        return 1

    kinds: Counter[str] = Counter()
    own_pkg: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    for frames, count in stacks:
        kinds[thread_kind(frames)] += count
        leaf = frames[-1]
        own_pkg[package_of(file_of(leaf))] += count
        own_fn[short(leaf)] += count
        for name in {short(f) for f in frames}:
            incl_fn[name] += count

    def table(title: str, counter: Counter[str], top: int) -> None:
        print(f"\n{title}")
        for name, count in counter.most_common(top):
            print(f"  {count / total * 100:5.1f}%  {count:7d}  {name}")

    print(f"{args.file}: {total} samples" + (f" through '{args.focus}'" if args.focus else ""))
    table("by thread (stack root)", kinds, 10)
    table("own time by package", own_pkg, 20)
    table("own time by function", own_fn, args.top)
    table("inclusive time by function", incl_fn, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
