"""A bounded store for XEP-0050 command sessions.

slixmpp keeps every command session in a plain dict, completed ones included, and
frees abandoned ones never: anyone can grow it by sending `execute` and walking away.
This store keeps only sessions that still expect a next step, for a limited time, and
at most a fixed number of them (oldest dropped first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any


class CommandSessions(MutableMapping[str, dict[str, Any]]):
    def __init__(self, max_sessions: int = 500, ttl: float = 300.0) -> None:
        self._max = max_sessions
        self._ttl = ttl
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def __setitem__(self, key: str, session: dict[str, Any]) -> None:
        self._items.pop(key, None)
        if session.get("next") is None and not session.get("has_next"):
            return  # completed: nothing will ever ask for it again
        self._items[key] = (time.monotonic() + self._ttl, session)
        self._prune()

    def __getitem__(self, key: str) -> dict[str, Any]:
        expires, session = self._items[key]
        if expires < time.monotonic():
            del self._items[key]
            raise KeyError(key)
        return session

    def __delitem__(self, key: str) -> None:
        self._items.pop(key, None)  # slixmpp deletes what it may never have stored

    def __iter__(self) -> Iterator[str]:
        self._prune()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._prune()
        return len(self._items)

    def _prune(self) -> None:
        now = time.monotonic()
        while self._items and (
            len(self._items) > self._max or next(iter(self._items.values()))[0] < now
        ):
            self._items.popitem(last=False)
