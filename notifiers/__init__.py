"""Delivery channels. `create_notifier` builds the one a channel config names."""

from __future__ import annotations

from typing import Any

from .base import Notification, Notifier, Outcome, SendResult

__all__ = ["Notification", "Notifier", "Outcome", "SendResult", "create_notifier"]


async def create_notifier(name: str, config: Any) -> Notifier:
    if config.type == "fcm":
        from .fcm import FcmNotifier

        return await FcmNotifier.create(name, config)
    if config.type == "email":
        from .email import EmailNotifier

        return await EmailNotifier.create(name, config)
    raise ValueError(f"no notifier for channel type {config.type!r}")
