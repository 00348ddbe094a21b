"""The whole Openfire-side test stack as one fixture: Prosody (for the component
stream), the FCM stand-in, an SMTP server, and Openfire's tables in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_fcm import FakeFcm
from tests.support.ofnotify_service import email_channel, fcm_channel, write_config
from tests.support.openfire_db import OpenfireDb
from tests.support.smtp_server import SmtpServer
from tests.support.xmpp_servers import XmppServer

__all__ = ["Stack", "configure", "stack"]

DOMAIN = "example.test"  # Prosody's domain doubles as Openfire's here


def configure(
    tmp_path: Path,
    prosody: XmppServer,
    fake_fcm: FakeFcm,
    smtp: SmtpServer,
    postgres_db: str,
    *,
    delay: str = "1s",
    rules: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> Path:
    """A config with the watcher on, both channels, and (by default) a digest rule."""
    return write_config(
        tmp_path / "of.yaml",
        prosody,
        fake_fcm,
        privacy={"include_sender": True, "include_body": True},
        channels={
            "phone": fcm_channel(fake_fcm),
            "mail": email_channel(smtp.port, timeout="5s"),
        },
        rules=rules
        or [
            {
                "event": "offline_message",
                "channel": "mail",
                "delay": delay,
                "digest": True,
                "min_interval": "1h",
            }
        ],
        openfire={
            "database_url": postgres_db,
            "domain": DOMAIN,
            "poll_interval": "0.2s",
            "push_grace": "1s",
        },
        **sections,
    )


@dataclass
class Stack:
    tmp_path: Path
    prosody: XmppServer
    fake_fcm: FakeFcm
    smtp: SmtpServer
    postgres_db: str
    openfire_db: OpenfireDb

    def configure(self, **kwargs: Any) -> Path:
        return configure(
            self.tmp_path, self.prosody, self.fake_fcm, self.smtp, self.postgres_db, **kwargs
        )


@pytest.fixture
def stack(
    tmp_path: Path,
    prosody: XmppServer,
    fake_fcm: FakeFcm,
    smtp: SmtpServer,
    postgres_db: str,
    openfire_db: OpenfireDb,
) -> Stack:
    return Stack(tmp_path, prosody, fake_fcm, smtp, postgres_db, openfire_db)
