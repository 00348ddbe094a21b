"""Every error ofnotify raises on purpose.

::

    OfnotifyError
    ├── ConfigError                 the YAML file is unusable; carries every problem
    └── ComponentAuthError          the XMPP server rejected the component secret

Delivery problems are not exceptions: a notifier answers every send with a
`notifiers.base.SendResult` (delivered / retry after t / failed / target invalid),
classified by its own failure table, so the dispatcher never sees a notifier raise.
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
