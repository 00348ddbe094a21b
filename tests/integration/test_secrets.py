"""Issue 4.5: secrets never reach logs, error texts, `deliveries` or `registrations`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from component.cli import main as cli
from component.config import load_config
from component.logsetup import setup_logging
from tests.support.fake_fcm import FakeFcm, FcmReply
from tests.support.ofnotify_service import (
    delivery_log,
    email_channel,
    fcm_channel,
    running_service,
    wait_for,
    write_config,
)
from tests.support.push_client import offline_with_push
from tests.support.smtp_server import SmtpServer
from tests.support.xmpp_client import connect_client
from tests.support.xmpp_servers import ProsodyServer

pytestmark = pytest.mark.integration

COMPONENT_SECRET = "component-SECRET-5f1e9a"
SMTP_PASSWORD = "smtp-PASSWORD-77c3b2"
TOKEN = "device-TOKEN-ab12cd34ef56gh78"
DEAD_TOKEN = "device-TOKEN-dead-0987654321"


@pytest.fixture
def prosody_with_secret(tmp_path: Path) -> Iterator[ProsodyServer]:
    server = ProsodyServer(tmp_path / "prosody", component_secret=COMPONENT_SECRET)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_no_secret_in_any_output(
    tmp_path: Path,
    prosody_with_secret: ProsodyServer,
    fake_fcm: FakeFcm,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = prosody_with_secret
    setup_logging("DEBUG")  # what an operator gets with --log-level DEBUG
    caplog.set_level(logging.DEBUG)
    fake_fcm.always(DEAD_TOKEN, FcmReply.unregistered())
    smtp = SmtpServer(users={"notifier": "the-right-password"})  # ours is wrong
    smtp.start()
    config_path = write_config(
        tmp_path / "of.yaml",
        server,
        fake_fcm,
        privacy={"include_sender": True, "include_body": True},
        channels={
            "phone": fcm_channel(fake_fcm),
            "mail": email_channel(smtp.port, username="notifier", password=SMTP_PASSWORD),
        },
        rules=[{"event": "offline_message", "channel": "phone"}],
        accounts={"alice@example.test": {"email": "alice@mail.example"}},
    )
    for user in ("alice", "carol", "bob", "dave"):
        server.register(user, "pw")
    secrets: list[str] = [COMPONENT_SECRET, SMTP_PASSWORD, TOKEN, DEAD_TOKEN]
    try:
        async with running_service(config_path) as service:
            for user, token in (("alice", TOKEN), ("carol", DEAD_TOKEN)):
                fields = await offline_with_push(server, user, token, device=f"dev-{user}")
                secrets += [fields["secret"], fields["node"]]
            # Dave points his pushes at Carol's node with a made-up secret: refused.
            dave = await connect_client(server, "dave", "pw")
            await dave.enable_push(server.component_jid, fields["node"], "forged-SECRET-123456")
            await dave.go_offline()
            secrets.append("forged-SECRET-123456")
            bob = await connect_client(server, "bob", "pw")
            await bob.send_chat("alice@example.test", "hello")
            await bob.send_chat("carol@example.test", "hello")
            await bob.send_chat("dave@example.test", "hello")
            await fake_fcm.wait_for_requests(2, timeout=10)
            await wait_for(lambda: _logged(service.config, "target_invalid"), what="the dead token")
            assert service.appserver is not None
            await wait_for(lambda: service.appserver.publish_outcomes["not-authorized"] >= 1)
            # An email with a rejected password, sent through the notifier directly.
            from notifiers import Notification, create_notifier

            mailer = await create_notifier("mail", service.config.channels["mail"])
            result = await mailer.send(
                Notification(
                    outbox_id=1,
                    account="alice@example.test",
                    target="alice@mail.example",
                    conversation="bob@example.test",
                    sender="bob@example.test",
                    body="hi",
                )
            )
            await mailer.close()
            await bob.go_offline()
    finally:
        smtp.stop()
    secrets += [g.access_token for g in fake_fcm.token_grants]
    key_file = Path(str(fake_fcm.service_account_path))
    key = json.loads(await asyncio.to_thread(key_file.read_text))["private_key"]
    secrets += [line for line in key.splitlines() if len(line) > 40][:3]

    runner = CliRunner()
    outputs = [caplog.text, result.reason, str(result)]
    for args in (
        ["deliveries"],
        ["deliveries", "--json"],
        ["registrations"],
        ["registrations", "--json"],
        ["check-config"],
    ):
        shown = await asyncio.to_thread(runner.invoke, cli, [*args, "--config", str(config_path)])
        assert shown.exit_code == 0, shown.output
        outputs.append(shown.output)
    outputs += [repr(e.__dict__) for e in await delivery_log(load_config(config_path))]
    assert "authentication failed" in result.reason  # the failure is explained...
    everything = "\n".join(outputs)
    assert len(caplog.records) > 20  # ...and there was plenty of logging to leak into
    for secret in secrets:
        assert secret not in everything, f"a secret leaked: {secret[:6]}…"


async def _logged(config: object, status: str) -> bool:
    return any(e.status == status for e in await delivery_log(config))  # type: ignore[arg-type]
