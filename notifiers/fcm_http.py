"""The HTTP session pyfcm posts through: libcurl (pycurl), not requests.

pyfcm builds the message, obtains OAuth tokens and judges FCM's answer; the only
thing it asks of its session is `post(url, data=..., timeout=...)` returning
something with `status_code`, `headers`, `json()` and `text`. The worker threads
that send share the GIL with the event loop, and what limits ofnotify's throughput
is Python work under that lock. requests spent ~0.7 ms of it per POST, urllib3 alone
~0.25 ms; libcurl does the whole exchange with the GIL released (~0.05 ms of CPU per
POST in all). One curl handle per worker thread keeps its connection alive; TLS is
verified against certifi's bundle (as requests does); the environment's proxy for
the endpoint (honouring NO_PROXY) is resolved once.
"""

from __future__ import annotations

import contextlib
import json
import threading
from io import BytesIO
from typing import Any

import certifi
import pycurl
from requests.utils import get_environ_proxies
from urllib3 import HTTPHeaderDict

__all__ = ["LeanResponse", "LeanSession", "TransportError"]


class TransportError(Exception):
    """No HTTP answer: refused, reset, timed out, TLS or proxy failure."""


class LeanResponse:
    """The part of `requests.Response` that pyfcm and ofnotify read."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: HTTPHeaderDict, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # case-insensitive, like requests'
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class LeanSession:
    """Posts to the FCM endpoint from any worker thread; `headers` (a dict, replaced
    whole when the bearer token changes) go with every request."""

    def __init__(self, endpoint: str, pool_size: int) -> None:
        self.headers: dict[str, str] = {}
        # An empty proxy disables libcurl's own reading of the environment, which
        # ignores HTTP_PROXY in capitals; requests' rules decide, as before.
        self._proxy = get_environ_proxies(endpoint).get(endpoint.partition(":")[0]) or ""
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def post(
        self, url: str, data: bytes | None = None, timeout: float | None = None
    ) -> LeanResponse:
        curl = self._handle()
        body = BytesIO()
        header_lines: list[bytes] = []
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, self._header_lines())
        curl.setopt(pycurl.POSTFIELDS, data or b"")
        curl.setopt(pycurl.WRITEDATA, body)
        curl.setopt(pycurl.HEADERFUNCTION, header_lines.append)
        curl.setopt(pycurl.TIMEOUT_MS, int((timeout or 0) * 1000))
        try:
            curl.perform()
        except pycurl.error as exc:
            code, message = exc.args if len(exc.args) == 2 else (0, str(exc))
            raise TransportError(f"curl error {code}: {message}") from None
        return LeanResponse(
            int(curl.getinfo(pycurl.RESPONSE_CODE)), _parse_headers(header_lines), body.getvalue()
        )

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for curl in handles:
            # A send still running past the stop grace keeps its handle; the garbage
            # collector closes it once that thread is done with it.
            with contextlib.suppress(pycurl.error):
                curl.close()

    def _handle(self) -> pycurl.Curl:
        curl: pycurl.Curl | None = getattr(self._local, "curl", None)
        if curl is None:
            curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)  # required with timeouts in threads
            curl.setopt(pycurl.CAINFO, certifi.where())
            curl.setopt(pycurl.PROXY, self._proxy)
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            self._local.curl = curl
            with self._lock:
                self._handles.append(curl)
        return curl

    def _header_lines(self) -> list[str]:
        # Cached per headers dict: it is replaced, never changed in place.
        cached = getattr(self._local, "header_lines", None)
        if cached is None or cached[0] is not self.headers:
            lines = [f"{k}: {v}" for k, v in self.headers.items()]
            lines.append("Expect:")  # no 100-continue round trip before the body
            cached = (self.headers, lines)
            self._local.header_lines = cached
        return cached[1]


def _parse_headers(lines: list[bytes]) -> HTTPHeaderDict:
    """The last response's headers (a proxy may answer first, with its own)."""
    headers = HTTPHeaderDict()
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            headers = HTTPHeaderDict()
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    return headers
