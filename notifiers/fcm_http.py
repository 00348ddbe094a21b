"""The HTTP session pyfcm posts through: urllib3 directly, not requests.

pyfcm builds the message, obtains OAuth tokens and judges FCM's answer; the only
thing it asks of its session is `post(url, data=..., timeout=...)` returning
something with `status_code`, `headers`, `json()` and `text`. requests spends
~0.7 ms of CPU per POST on layers this one endpoint does not need (request
preparation, settings merging, hooks, cookie jars), under the GIL that the event
loop also needs; urllib3 — which requests uses underneath — does the same POST
in ~0.3 ms. Same pooling, same TLS verification (certifi's bundle, like requests),
same proxy rules (the environment's, resolved once for the one endpoint).
"""

from __future__ import annotations

import json
from typing import Any

import certifi
import urllib3
from requests.utils import get_environ_proxies
from urllib3.exceptions import HTTPError as TransportError

__all__ = ["LeanResponse", "LeanSession", "TransportError"]


class LeanResponse:
    """The part of `requests.Response` that pyfcm and ofnotify read."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Any, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # urllib3's HTTPHeaderDict: case-insensitive, like requests
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class LeanSession:
    """One pool of keep-alive connections to the FCM endpoint, shared by the worker
    threads (urllib3 pools are thread-safe). `headers` carries the bearer token."""

    def __init__(self, endpoint: str, pool_size: int) -> None:
        self.headers: dict[str, str] = {}
        proxy = get_environ_proxies(endpoint).get(endpoint.partition(":")[0])
        kwargs: dict[str, Any] = {
            "num_pools": 2,
            "maxsize": pool_size,
            "retries": False,  # retries are the dispatcher's: durable and bounded
            "ca_certs": certifi.where(),
        }
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **kwargs) if proxy else urllib3.PoolManager(**kwargs)
        )

    def post(
        self, url: str, data: bytes | None = None, timeout: float | None = None
    ) -> LeanResponse:
        response = self._pool.urlopen(
            "POST",
            url,
            body=data,
            headers=self.headers,
            timeout=urllib3.Timeout(total=timeout) if timeout is not None else None,
            retries=False,
            redirect=False,
            preload_content=True,
        )
        return LeanResponse(response.status, response.headers, response.data)

    def close(self) -> None:
        self._pool.clear()
