"""Run the real ofnotify service in-process against real servers, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from component.config import Config, load_config
from component.service import Service
from component.store import DeliveryLogEntry, make_engine, make_sessionmaker
from tests.support.fake_fcm import FakeFcm
from tests.support.xmpp_servers import XmppServer


def fcm_channel(fcm: FakeFcm, **extra: Any) -> dict[str, Any]:
    """An `fcm` channel pointed at the stand-in."""
    return {
        "type": "fcm",
        "project_id": fcm.project_id,
        "service_account_file": str(fcm.service_account_path),
        "endpoint": fcm.base_url,
        **extra,
    }


def email_channel(port: int, **extra: Any) -> dict[str, Any]:
    """An `email` channel for the local SMTP server, plain (no TLS)."""
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "sender": "Chat <chat@example.test>",
        **extra,
    }


def write_config(
    path: Path,
    server: XmppServer,
    fcm: FakeFcm,
    *,
    storage_url: str | None = None,
    secret: str | None = None,
    privacy: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """A config file for `server` and `fcm`; keyword arguments add or replace sections."""
    assert fcm.service_account_path is not None
    config: dict[str, Any] = {
        "xmpp": {
            "jid": server.component_jid,
            "host": server.host,
            "port": server.component_port,
            "secret": secret or server.component_secret,
            "keepalive_interval": "5s",
            "reconnect_max_delay": "2s",
        },
        "storage": {"url": storage_url or f"sqlite:///{path.parent / 'ofnotify.db'}"},
        "channels": {"phone": fcm_channel(fcm, timeout="5s")},
        "rules": [{"event": "offline_message", "channel": "phone"}],
        "privacy": privacy or {"include_sender": True, "include_body": False},
        "delivery": delivery or {"max_attempts": 5, "backoff_initial": "0.2s", "backoff_max": "2s"},
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


async def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running_service(config: Config | Path) -> AsyncIterator[Service]:
    if isinstance(config, Path):
        config = load_config(config)
    service = Service(config)
    task = asyncio.create_task(service.run(), name="ofnotify-under-test")
    try:
        await wait_for(
            lambda: (
                task.done() or (service.connection is not None and service.connection.connected)
            ),
            what="the component to come online",
        )
        if task.done():
            raise RuntimeError(f"service exited early with {task.result()}")
        yield service
    finally:
        service.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)


async def delivery_log(config: Config) -> list[DeliveryLogEntry]:
    engine = make_engine(config.storage.url)
    try:
        async with make_sessionmaker(engine)() as session:
            return list(
                (
                    await session.execute(select(DeliveryLogEntry).order_by(DeliveryLogEntry.id))
                ).scalars()
            )
    finally:
        await engine.dispose()
