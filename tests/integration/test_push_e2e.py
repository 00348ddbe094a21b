"""Issue 2 end to end: real Prosody/ejabberd, real ofnotify, pyfcm against the FCM stand-in.

Each test runs against both servers (the `xmpp_server` fixture is parametrized).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from component.config import load_config
from component.service import EXIT_AUTH, Service
from tests.support.fake_fcm import FakeFcm, FcmReply
from tests.support.ofnotify_service import delivery_log, running_service, wait_for, write_config
from tests.support.push_client import offline_with_push, register_device
from tests.support.xmpp_client import Client, XmppError, connect_client
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration


@pytest.fixture
def users(xmpp_server: XmppServer) -> XmppServer:
    for user in ("alice", "bob"):
        xmpp_server.register(user, "pw")
    return xmpp_server


async def test_offline_message_is_pushed_and_logged(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path) as service:
        await offline_with_push(users, "alice", "tok-alice-0001")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "secret words")
        [request] = await fake_fcm.wait_for_requests(1, timeout=10)
        assert request.token == "tok-alice-0001"
        data = request.message["data"]
        assert data["account"] == f"alice@{users.domain}"
        assert data["sender"] == f"bob@{users.domain}"
        assert data["message_count"] == "1"
        assert "body" not in data  # include_body: false
        assert "secret words" not in str(request.message)
        collapse = request.message["android"]["collapse_key"]
        assert collapse and "bob" not in collapse
        await wait_for(
            lambda: service.appserver and service.appserver.publish_outcomes["accepted"] == 1
        )
        await bob.go_offline()
    log = await delivery_log(load_config(config_path))
    delivered = [e for e in log if e.status == "delivered"]
    assert len(delivered) == 1
    assert delivered[0].account == f"alice@{users.domain}"
    assert "tok-alice-0001" not in delivered[0].target
    assert delivered[0].latency_ms is not None
    assert len(fake_fcm.requests) == 1


async def test_body_is_included_only_when_allowed(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(
        tmp_path / "of.yaml",
        users,
        fake_fcm,
        privacy={"include_sender": False, "include_body": True},
    )
    async with running_service(config_path):
        await offline_with_push(users, "alice", "tok-body")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "hello there")
        [request] = await fake_fcm.wait_for_requests(1, timeout=10)
        assert request.message["data"]["body"] == "hello there"
        assert "sender" not in request.message["data"]
        await bob.go_offline()


async def test_registration_is_stable_and_owned(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path):
        alice, first = await register_device(users, "alice", "tok-1")
        # Same account and device again: same node and secret, token updated.
        again = await alice.run_command(
            users.component_jid, "register-push-fcm", {"token": "tok-2", "android-id": "dev-1"}
        )
        assert {k: str(v) for k, v in again["fields"].items()} == first
        with pytest.raises(XmppError) as missing:
            await alice.run_command(users.component_jid, "register-push-fcm", {"token": "t"})
        assert missing.value.condition == "bad-request"
        # Bob cannot remove Alice's device.
        bob = await connect_client(users, "bob", "pw")
        with pytest.raises(XmppError) as foreign:
            await bob.run_command(
                users.component_jid, "unregister-push-fcm", {"device-id": "dev-1"}
            )
        assert foreign.value.condition == "item-not-found"
        result = await alice.run_command(
            users.component_jid, "unregister-push-fcm", {"device-id": "dev-1"}
        )
        assert result["status"] == "completed"
        await alice.go_offline()
        await bob.go_offline()


async def test_registrations_survive_restart_of_ofnotify(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path):
        await offline_with_push(users, "alice", "tok-persist")
    async with running_service(config_path):
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "after restart")
        [request] = await fake_fcm.wait_for_requests(1, timeout=10)
        assert request.token == "tok-persist"
        await bob.go_offline()


async def test_wrong_secret_is_refused_and_nothing_sent(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path) as service:
        await offline_with_push(users, "alice", "tok-wrong", secret="not-the-secret")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "hi")
        assert service.appserver is not None
        await wait_for(lambda: service.appserver.publish_outcomes["not-authorized"] >= 1)
        await asyncio.sleep(0.5)
        assert fake_fcm.requests == []
        await bob.go_offline()


async def test_unknown_node_is_item_not_found(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path) as service:
        await offline_with_push(users, "alice", "tok-x", node="no-such-node")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "hi")
        assert service.appserver is not None
        await wait_for(lambda: service.appserver.publish_outcomes["item-not-found"] >= 1)
        assert fake_fcm.requests == []
        await bob.go_offline()


async def test_unregistered_token_disables_the_node(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    fake_fcm.always("tok-dead", FcmReply.unregistered())
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path) as service:
        assert service.appserver is not None
        outcomes = service.appserver.publish_outcomes
        await offline_with_push(users, "alice", "tok-dead")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "one")
        await fake_fcm.wait_for_requests(1, timeout=10)
        await wait_for(lambda: _logged(service, "target_invalid"), what="target_invalid")
        # Later publishes for the dead node are refused with item-not-found...
        await wait_for(
            lambda: _send_and_count(bob, users, outcomes), timeout=15, what="item-not-found"
        )
        # ...and the server stops publishing (ejabberd at once; Prosody after 16 errors).
        for _ in range(17 if users.name == "prosody" else 1):
            await bob.send_chat(f"alice@{users.domain}", "more")
        refused = outcomes["item-not-found"]
        await bob.send_chat(f"alice@{users.domain}", "after disable")
        await asyncio.sleep(1.0)
        assert outcomes["item-not-found"] == refused
        assert len(fake_fcm.requests) == 1
        await bob.go_offline()
    log = await delivery_log(load_config(config_path))
    assert next(e.status for e in log if e.outbox_id is not None) == "target_invalid"


async def _logged(service: Service, status: str) -> bool:
    return any(e.status == status for e in await delivery_log(service.config))


async def _send_and_count(bob: Client, server: XmppServer, outcomes: dict[str, int]) -> bool:
    if outcomes.get("item-not-found", 0) >= 1:
        return True
    await bob.send_chat(f"alice@{server.domain}", "poke")
    await asyncio.sleep(0.3)
    return outcomes.get("item-not-found", 0) >= 1


async def test_quota_exceeded_is_retried_after_retry_after(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    fake_fcm.script("tok-busy", [FcmReply.quota_exceeded(retry_after=2)])
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path):
        await offline_with_push(users, "alice", "tok-busy")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "hi")
        first, second = await fake_fcm.wait_for_requests(2, timeout=15)
        assert first.status == 429 and second.status == 200
        assert second.received_at - first.received_at >= 2.0
        await asyncio.sleep(0.5)
        assert len(fake_fcm.requests) == 2  # delivered once
        await bob.go_offline()
    statuses = [e.status for e in await delivery_log(load_config(config_path)) if e.outbox_id]
    assert statuses == ["retry", "delivered"]


async def test_reconnects_after_server_restart(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path) as service:
        await offline_with_push(users, "alice", "tok-restart")
        connection = service.connection
        assert connection is not None
        await asyncio.to_thread(users.restart)
        await wait_for(lambda: connection.connected, timeout=30, what="reconnection")
        bob = await connect_client(users, "bob", "pw")
        await bob.send_chat(f"alice@{users.domain}", "after the restart")
        [request] = await fake_fcm.wait_for_requests(1, timeout=15)
        assert request.token == "tok-restart"
        await bob.go_offline()


async def test_wrong_component_secret_stops_with_clear_error(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_config(tmp_path / "of.yaml", users, fake_fcm, secret="wrong"))
    code = await asyncio.wait_for(Service(config).run(), timeout=30)
    assert code == EXIT_AUTH
    assert "rejected component" in caplog.text
    assert "wrong" not in caplog.text.replace("wrong or missing", "")


async def test_disco_info_announces_a_push_service(
    users: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "of.yaml", users, fake_fcm)
    async with running_service(config_path):
        alice = await connect_client(users, "alice", "pw")
        info = await alice.xmpp.plugin["xep_0030"].get_info(jid=users.component_jid, timeout=10)
        identities = {(c, t) for c, t, _, _ in info["disco_info"]["identities"]}
        features = set(info["disco_info"]["features"])
        assert ("pubsub", "push") in identities
        assert {"urn:xmpp:push:0", "http://jabber.org/protocol/commands"} <= features
        await alice.go_offline()
