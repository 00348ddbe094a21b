"""Per-account token buckets: how long until the next notification may go out."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    """`rate` tokens per second, at most `burst` saved up, one bucket per key.

    Buckets live in memory: after a restart everyone starts with a full bucket, which
    costs at most one burst per account.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)

    def take(self, key: str, now: float | None = None) -> float:
        """Take a token if there is one (→ 0.0), else the seconds until there will be."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self._rate
        while len(self._buckets) > self._max_keys:  # quiet accounts are forgotten first
            self._buckets.popitem(last=False)
        return wait
