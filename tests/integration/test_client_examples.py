"""Issue 5.5: the client examples in docs/clients/ work, end to end.

Each example runs as a real subprocess (Node for register-push.js, this interpreter for
register_push.py) against a real Prosody, with ofnotify running in-process and the FCM
stand-in behind it. Registering has to lead to a delivered push: the example logs in,
registers, enables push, logs out; then another account writes and the stand-in must
receive a data message for the example's token, which the delivery log shows delivered.

Node and the npm packages are prerequisites, like Prosody: a missing one fails the test
instead of skipping it. `scripts/test` installs them with
``(cd docs/clients && npm ci --no-audit --no-fund)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from component.config import load_config
from tests.support.fake_fcm import FakeFcm
from tests.support.ofnotify_service import delivery_log, running_service, wait_for, write_config
from tests.support.xmpp_client import connect_client
from tests.support.xmpp_servers import XmppServer

pytestmark = pytest.mark.integration

CLIENTS = Path(__file__).resolve().parents[2] / "docs" / "clients"
NPM_CI = "(cd docs/clients && npm ci --no-audit --no-fund)"
EXAMPLE_TIMEOUT = 60.0  # seconds for one run of an example, login to logout
ALICE_PASSWORD = "alice-PASSWORD-3f9c1d"  # distinctive, to be sure no output shows it


@pytest.fixture(scope="session")
def node_ready() -> str:
    """The `node` binary, once it and the pinned npm packages are known to be there.

    Only checks: `npm ci` wipes node_modules and needs the registry, which is no job
    for a test run; CI runs it before the tests.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node not found: install Node.js >= 20.10 and run {NPM_CI}")
    wanted = json.loads((CLIENTS / "package.json").read_text())["dependencies"]
    for package, version in wanted.items():
        manifest = CLIENTS / "node_modules" / package / "package.json"
        if not manifest.is_file():
            pytest.fail(f"npm package {package} missing in {CLIENTS}: run {NPM_CI}")
        installed = json.loads(manifest.read_text())["version"]
        if installed != version:
            pytest.fail(f"{package} {installed} installed, package.json pins {version}: {NPM_CI}")
    return node


@pytest.fixture(params=["node", "python"])
def example(request: pytest.FixtureRequest) -> list[str]:
    """The command line that runs one example (options come on top)."""
    if request.param == "node":
        return [request.getfixturevalue("node_ready"), "register-push.js"]
    return [sys.executable, "register_push.py"]


@pytest.fixture
def accounts(prosody: XmppServer) -> XmppServer:
    prosody.register("alice", ALICE_PASSWORD)
    prosody.register("bob", "pw")
    return prosody


def example_env(server: XmppServer, *, insecure: bool = True) -> dict[str, str]:
    """Connection settings through the environment, as the guide recommends."""
    return {
        **os.environ,
        "XMPP_SERVICE": f"xmpp://{server.host}:{server.c2s_port}",
        "XMPP_DOMAIN": server.domain,
        "XMPP_USERNAME": "alice",
        "XMPP_PASSWORD": ALICE_PASSWORD,
        "XMPP_RESOURCE": "",
        "OFNOTIFY_JID": server.component_jid,
        "PUSH_MUC": "",
        # The test servers have no TLS at all.
        "XMPP_INSECURE": "1" if insecure else "",
    }


async def run_example(command: list[str], env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        cwd=CLIENTS,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"{command} did not finish within {EXAMPLE_TIMEOUT} s\n{err.decode()}")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def register(command: list[str], server: XmppServer, token: str) -> str:
    """Run the example for alice's device `phone-1`; return the node it printed."""
    code, out, err = await run_example(
        command, example_env(server), "--token", token, "--device-id", "phone-1"
    )
    assert code == 0, f"{command} exited with {code}\n{err}\n{server.log_tail(30)}"
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected the node alone on stdout: {out!r}"
    assert token not in out + err and ALICE_PASSWORD not in out + err
    return lines[0].strip()


async def test_example_registration_leads_to_a_delivered_push(
    example: list[str], accounts: XmppServer, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    server = accounts
    config_path = write_config(tmp_path / "of.yaml", server, fake_fcm)
    async with running_service(config_path) as service:
        node = await register(example, server, "tok-example-old")
        # The FCM token was refreshed: the same account and device run it again and get
        # the same node (and secret), so the server's enable simply replaces the first.
        assert await register(example, server, "tok-example-new") == node

        # The example has logged out: alice is offline now, and bob writes to her.
        bob = await connect_client(server, "bob", "pw")
        await bob.send_chat(f"alice@{server.domain}", "are you there?")
        [request] = await fake_fcm.wait_for_requests(1, timeout=15)
        assert request.status == 200
        assert request.token == "tok-example-new"
        assert request.message is not None
        data = request.message["data"]
        assert data["account"] == f"alice@{server.domain}"
        assert data["conversation"] == f"bob@{server.domain}"
        assert data["sender"] == f"bob@{server.domain}"
        assert data["message_count"] == "1"
        assert data["notification_id"].isdigit()
        assert "body" not in data  # include_body: false
        assert request.message["android"]["collapse_key"]

        async def delivered() -> bool:
            return any(e.status == "delivered" for e in await delivery_log(service.config))

        await wait_for(delivered, timeout=10, what="a delivered entry in the delivery log")
        await bob.go_offline()

    log = [e for e in await delivery_log(load_config(config_path)) if e.outbox_id is not None]
    assert [e.status for e in log] == ["delivered"]
    assert log[0].account == f"alice@{server.domain}"
    assert log[0].channel == "phone"
    assert "tok-example-new" not in log[0].target
    assert len(fake_fcm.requests) == 1


async def test_example_refuses_to_log_in_without_tls_unless_told(
    example: list[str], accounts: XmppServer
) -> None:
    """Without --insecure the password never crosses an unencrypted connection."""
    code, out, err = await run_example(
        example,
        example_env(accounts, insecure=False),
        "--token",
        "tok-never",
        "--device-id",
        "phone-1",
    )
    assert code == 1
    assert out == ""
    assert "not encrypted" in err and "--insecure 1" in err
    log = accounts.log_tail(100_000)
    assert "<auth " not in log and "Authenticated as" not in log
