"""What the sources report, in the small typed form the policy decides on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfflineMessage:
    """A message reached `account` while no client of theirs could show it.

    `registration_id` is set when the source is an XEP-0357 publish for one device;
    otherwise every device/address of the account is a candidate.
    """

    account: str  # bare JID of the recipient
    dedup_key: str  # the same message seen twice must produce the same key
    sender: str | None = None  # bare JID, if the source knows it
    body: str | None = None
    message_count: int = 1
    registration_id: int | None = None
    source: str = "xep0357"

    @property
    def conversation(self) -> str:
        return self.sender or ""

    event: str = "offline_message"
