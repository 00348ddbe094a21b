"""`ofnotify send-test` against the local FCM stand-in: a marked push per registered
device, each answer printed and logged, a dead token disabled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from click.testing import CliRunner
from sqlalchemy import select

from component.cli import main
from component.config import load_config
from component.registrations import register
from component.store import (
    DeliveryLogEntry,
    Registration,
    create_schema,
    make_engine,
    make_sessionmaker,
)
from tests.support.fake_fcm import FakeFcm, FcmReply
from tests.support.ofnotify_service import fcm_channel

ALICE = "alice@example.test"


def config_file(tmp_path: Path, fcm: FakeFcm) -> Path:
    path = tmp_path / "ofnotify.yaml"
    config = {
        "xmpp": {"jid": "push.example.test", "secret": "s3cret"},
        "storage": {"url": f"sqlite:///{tmp_path / 'ofnotify.db'}"},
        "channels": {"phone": fcm_channel(fcm, timeout="5s")},
        "rules": [{"event": "offline_message", "channel": "phone"}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def registered(path: Path, devices: dict[str, str]) -> None:
    """device id → token, stored as `register-push-fcm` stores them."""

    async def go() -> None:
        engine = make_engine(load_config(path).storage.url)
        await create_schema(engine)
        async with make_sessionmaker(engine)() as session, session.begin():
            for device, token in devices.items():
                await register(
                    session,
                    account=ALICE,
                    device_id=device,
                    muc="",
                    token=token,
                    channel="phone",
                    max_per_account=10,
                )
        await engine.dispose()

    asyncio.run(go())


def stored(path: Path) -> tuple[list[DeliveryLogEntry], list[Registration]]:
    async def go() -> tuple[list[DeliveryLogEntry], list[Registration]]:
        engine = make_engine(load_config(path).storage.url)
        async with make_sessionmaker(engine)() as session:
            log = list((await session.execute(select(DeliveryLogEntry))).scalars())
            regs = list((await session.execute(select(Registration))).scalars())
        await engine.dispose()
        return log, regs

    return asyncio.run(go())


def test_every_device_gets_a_marked_push(tmp_path: Path, fake_fcm: FakeFcm) -> None:
    path = config_file(tmp_path, fake_fcm)
    registered(path, {"phone-1": "token-one-0123456789", "tablet": "token-two-0123456789"})
    result = CliRunner().invoke(main, ["send-test", ALICE, "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count(": delivered in ") == 2
    assert "token-one-0123456789" not in result.output  # shortened, as everywhere
    sent = {r.token: r.message for r in fake_fcm.requests}
    assert set(sent) == {"token-one-0123456789", "token-two-0123456789"}
    for message in sent.values():
        assert message is not None
        assert message["data"]["test"] == "true"
        assert message["data"]["account"] == ALICE
        assert "sender" not in message["data"] and "body" not in message["data"]
    log, _ = stored(path)
    assert [(e.status, e.error) for e in log] == [("delivered", "send-test")] * 2


def test_a_dead_token_is_reported_and_disabled(tmp_path: Path, fake_fcm: FakeFcm) -> None:
    path = config_file(tmp_path, fake_fcm)
    registered(path, {"old": "token-dead-0123456789", "new": "token-live-0123456789"})
    fake_fcm.always("token-dead-0123456789", FcmReply.unregistered())
    result = CliRunner().invoke(main, ["send-test", ALICE, "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "target_invalid (UNREGISTERED" in result.output
    assert ": delivered in " in result.output
    log, regs = stored(path)
    assert sorted(e.status for e in log) == ["delivered", "target_invalid"]
    disabled = {r.device_id: r.disabled_at is not None for r in regs}
    assert disabled == {"old": True, "new": False}


def test_nothing_registered_is_a_clear_error(tmp_path: Path, fake_fcm: FakeFcm) -> None:
    path = config_file(tmp_path, fake_fcm)
    result = CliRunner().invoke(main, ["send-test", ALICE, "--config", str(path)])
    assert result.exit_code == 1
    assert f"{ALICE} has no enabled push registration" in result.output
    assert fake_fcm.requests == []
    unknown = CliRunner().invoke(
        main, ["send-test", ALICE, "--channel", "nope", "--config", str(path)]
    )
    assert unknown.exit_code == 2 and "no channel 'nope'" in unknown.output
