"""The client side of push registration, as the integration tests need it."""

from __future__ import annotations

from tests.support.xmpp_client import Client, connect_client
from tests.support.xmpp_servers import XmppServer


async def register_device(
    server: XmppServer, user: str, token: str, device: str = "dev-1", password: str = "pw"
) -> tuple[Client, dict[str, str]]:
    """Log in as `user` and run `register-push-fcm`; the client stays online."""
    client = await connect_client(server, user, password)
    result = await client.run_command(
        server.component_jid, "register-push-fcm", {"token": token, "device-id": device}
    )
    assert result["status"] == "completed"
    fields = {k: str(v) for k, v in result["fields"].items()}
    assert fields["jid"] == server.component_jid
    return client, fields


async def offline_with_push(
    server: XmppServer,
    user: str,
    token: str,
    *,
    device: str = "dev-1",
    secret: str | None = None,
    node: str | None = None,
) -> dict[str, str]:
    """Register, enable push on the server (optionally with a wrong secret or node), and
    go offline, so the next message to `user` makes the server publish."""
    client, fields = await register_device(server, user, token, device)
    await client.enable_push(fields["jid"], node or fields["node"], secret or fields["secret"])
    await client.go_offline()
    return fields
