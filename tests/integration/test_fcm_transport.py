"""ofnotify's FCM notifier against the local FCM stand-in: the urllib3 session that
pyfcm posts through (notifiers/fcm_http.py) behaves like the requests session it
replaced — proxies from the environment, transport failures retried, answers read."""

from __future__ import annotations

import asyncio
import socket

import pytest

from notifiers.base import Notification, Outcome
from notifiers.fcm import FcmNotifier, _SingleShotFCM
from notifiers.fcm_http import LeanSession, TransportError
from tests.support.fake_fcm import FakeFcm, FcmReply


def notifier(fake: FakeFcm, endpoint: str | None = None) -> FcmNotifier:
    client = _SingleShotFCM(
        service_account_file=str(fake.service_account_path),
        project_id=fake.project_id,
        endpoint=endpoint or fake.base_url,
        pool_size=2,
    )
    return FcmNotifier("phone", client, timeout=5.0, workers=2)


def note(token: str = "device-token") -> Notification:
    return Notification(
        1, "alice@example.test", token, "bob@example.test", sender="bob@example.test"
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def send(n: FcmNotifier, notification: Notification) -> object:
    try:
        return await n.send(notification)
    finally:
        await n.close()


def test_delivers_and_reads_error_answers(fake_fcm: FakeFcm) -> None:
    fake_fcm.script("device-token", [FcmReply.quota_exceeded(retry_after=7), FcmReply.ok()])
    n = notifier(fake_fcm)
    try:
        first = asyncio.run(n.send(note()))
        second = asyncio.run(n.send(note()))
    finally:
        asyncio.run(n.close())
    assert (first.outcome, first.retry_after) == (Outcome.RETRY, 7.0)
    assert "QUOTA_EXCEEDED" in first.reason and "429" in first.reason
    assert second.outcome is Outcome.DELIVERED
    assert [r.token for r in fake_fcm.requests] == ["device-token", "device-token"]


def test_refused_connection_is_retried_not_failed(fake_fcm: FakeFcm) -> None:
    result = asyncio.run(send(notifier(fake_fcm, f"http://127.0.0.1:{closed_port()}"), note()))
    assert result.outcome is Outcome.RETRY
    assert result.reason.startswith("transport:")


def test_proxy_from_the_environment_is_used(
    fake_fcm: FakeFcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that refuses connections: if the session uses it, nothing arrives.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = LeanSession(fake_fcm.send_url(), pool_size=1)
    with pytest.raises(TransportError):
        session.post(fake_fcm.send_url(), data=b"{}", timeout=5)
    assert fake_fcm.requests == []


def test_no_proxy_is_honoured(fake_fcm: FakeFcm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    session = LeanSession(fake_fcm.send_url(), pool_size=1)
    answer = session.post(fake_fcm.send_url(), data=b"{}", timeout=5)
    assert answer.status_code == 401  # reached the FCM stand-in, which wants a token
    assert "error" in answer.json()
