"""Logging: text for people, JSON lines for log pipelines; noisy libraries muted."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

# These libraries log what they carry at DEBUG: whole stanzas (push tokens, publish
# secrets), SQL parameters, the SMTP conversation (AUTH), HTTP headers. Our own DEBUG
# lines are written to be safe; theirs are not, so they stay at WARNING.
LEAKY_LIBRARY_LOGGERS = (
    "slixmpp",
    "aiosqlite",
    "sqlalchemy",
    "asyncpg",
    "psycopg",
    "aiosmtplib",
    "urllib3",
    "requests",
    "google",
    "pyfcm",
    "aiohttp.access",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.set_name("ofnotify")
    root = logging.getLogger()
    # Replace only our own handler: others (a test harness, an embedding app) stay.
    for old in [h for h in root.handlers if h.get_name() == "ofnotify"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in LEAKY_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
