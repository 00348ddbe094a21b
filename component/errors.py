"""Every error ofnotify raises on purpose.

::

    OfnotifyError
    ├── ConfigError                 the YAML file is unusable; carries every problem
    ├── ComponentAuthError          the XMPP server rejected the component secret
    └── DeliveryError               a notifier could not deliver
        ├── TemporaryDeliveryError  try again later (optionally not before `retry_after`)
        └── PermanentDeliveryError  retrying will not help
            └── TargetInvalidError  the address/token is dead: disable it

Delivery errors are translated by each notifier into a `notifiers.base.SendResult`
at its boundary; the dispatcher never sees an exception from a notifier.
"""

from __future__ import annotations

from dataclasses import dataclass


class OfnotifyError(Exception):
    """Base of all errors raised deliberately by ofnotify."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration, located in the file."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<root>'}: {self.message}"

    def located(self, source: str) -> str:
        """Compiler style, so editors can jump to it: `file:line: path: message`."""
        line = f":{self.line}" if self.line else ""
        return f"{source}{line}: {self.path or '<root>'}: {self.message}"


class ConfigError(OfnotifyError):
    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.located(self.source) for p in self.problems)


class ComponentAuthError(OfnotifyError):
    """The XMPP server refused our handshake: retrying with the same secret is pointless."""


class DeliveryError(OfnotifyError):
    pass


class TemporaryDeliveryError(DeliveryError):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TargetInvalidError(PermanentDeliveryError):
    pass
