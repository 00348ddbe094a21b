"""What the sources report, in the small typed form the policy decides on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfflineMessage:
    """A message reached `account` while no client of theirs could show it.

    From an XEP-0357 publish, `registration_id` names the one device to wake; from
    the Openfire watcher, `missed_message_id` names the stored message and every
    device and address of the account is a candidate.
    """

    account: str  # bare JID of the recipient
    dedup_key: str  # the same message seen twice must produce the same key
    source: str  # "xep0357" | "watcher"
    sender: str | None = None  # bare JID, if the source knows it
    body: str | None = None
    message_count: int = 1
    registration_id: int | None = None
    missed_message_id: int | None = None
    event: str = "offline_message"

    @property
    def conversation(self) -> str:
        return self.sender or ""
