"""The optional HTTP listener: `/metrics` for Prometheus and `/healthz` for orchestrators."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import REGISTRY

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]
CHECK_TIMEOUT = 2.0


class HttpServer:
    def __init__(self, listen: str, checks: Mapping[str, Check]) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._checks = checks
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        log.info("serving /metrics and /healthz on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        results = await asyncio.gather(*(self._run(check) for check in self._checks.values()))
        checks = dict(zip(self._checks, results, strict=True))
        ready = all(checks.values())
        body = json.dumps({"status": "ok" if ready else "unavailable", "checks": checks})
        return web.Response(
            text=body, status=200 if ready else 503, content_type="application/json"
        )

    @staticmethod
    async def _run(check: Check) -> bool:
        try:
            return await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
        except Exception:
            return False
