"""The `ofnotify` command."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from . import outbox, reports
from .config import Config, exposes_secrets, load_config, resolve_config_path
from .durations import parse_age
from .errors import ConfigError
from .logsetup import setup_logging
from .service import EXIT_CONFIG, Service
from .store import create_schema, make_engine, make_sessionmaker

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="YAML configuration (default: $OFNOTIFY_CONFIG, else ./ofnotify.yaml).",
)


def _load(config_path: str | None) -> tuple[Path, Config]:
    path = resolve_config_path(config_path)
    try:
        return path, load_config(path)
    except ConfigError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(EXIT_CONFIG)


def _with_session(config: Config, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = make_engine(config.storage.url)
        try:
            await create_schema(engine)
            async with make_sessionmaker(engine)() as session, session.begin():
                return await fn(session)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@click.group()
@click.version_option(package_name="ofnotify")
def main() -> None:
    """Push and email notifications for Openfire users who were offline."""


@main.command()
@config_option
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def run(config_path: str | None, log_level: str) -> None:
    """Connect to the XMPP server and deliver notifications until stopped."""
    setup_logging(log_level.upper())
    path, config = _load(config_path)
    if exposes_secrets(path):
        logging.getLogger("ofnotify").warning(
            "%s is readable by other users and holds secrets (chmod 600 it, or use ${VAR})", path
        )
    sys.exit(asyncio.run(Service(config).run()))


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration; print every problem with its line."""
    path, config = _load(config_path)
    if exposes_secrets(path):
        click.echo(
            f"warning: {path} is readable by other users and holds secrets "
            "(chmod 600 it, or use ${VAR})",
            err=True,
        )
    channels = ", ".join(f"{n} ({c.type})" for n, c in config.channels.items())
    click.echo(
        f"{path}: OK — component {config.xmpp.jid}, channels: {channels}, "
        f"{len(config.rules)} rule(s)"
    )


@main.command()
@config_option
@click.option("--user", help="Bare JID of the recipient.")
@click.option("--channel")
@click.option(
    "--status",
    type=click.Choice(["delivered", "retry", "failed", "target_invalid", "skipped", "cancelled"]),
)
@click.option("--since", help="Only entries newer than this, e.g. 30m, 1h, 2d.")
@click.option("--outbox", "outbox_id", type=int, help="Only this notification's attempts.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deliveries(
    config_path: str | None,
    user: str | None,
    channel: str | None,
    status: str | None,
    since: str | None,
    outbox_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the delivery log: every attempt, and every decision not to send."""
    _, config = _load(config_path)
    try:
        since_seconds = parse_age(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    flt = reports.DeliveryFilter(user, channel, status, since_seconds, outbox_id, limit)
    rows = _with_session(config, lambda s: reports.deliveries(s, flt))
    _print(
        rows,
        as_json,
        [
            "at",
            "outbox_id",
            "account",
            "channel",
            "target",
            "status",
            "attempt",
            "latency_ms",
            "error",
        ],
    )


@main.command()
@config_option
@click.option("--user", help="Bare JID of the account.")
@click.option("--json", "as_json", is_flag=True)
def registrations(config_path: str | None, user: str | None, as_json: bool) -> None:
    """List push registrations (tokens and nodes shortened)."""
    _, config = _load(config_path)
    rows = _with_session(config, lambda s: reports.registrations(s, user))
    _print(
        rows,
        as_json,
        ["id", "account", "device", "muc", "channel", "token", "updated_at", "disabled"],
    )


@main.command()
@config_option
@click.option("--id", "ids", type=int, multiple=True, help="Outbox id (repeatable).")
@click.option("--user", help="All failed notifications of this account.")
@click.option("--all", "everything", is_flag=True, help="Every failed notification.")
def requeue(
    config_path: str | None, ids: tuple[int, ...], user: str | None, everything: bool
) -> None:
    """Give failed notifications a fresh set of attempts."""
    if not (ids or user or everything):
        raise click.UsageError("name --id, --user or --all")
    _, config = _load(config_path)
    count = _with_session(config, lambda s: outbox.requeue_failed(s, list(ids), user))
    click.echo(f"requeued {count} notification(s)")


@main.command("send-test")
@config_option
@click.argument("account")
@click.option("--channel", help="Only this push channel (default: all of them).")
def send_test(config_path: str | None, account: str, channel: str | None) -> None:
    """Push a test notification to every device ACCOUNT registered, now.

    Exits 0 when FCM accepted every one; each attempt is in `ofnotify deliveries`.
    """
    from .sendtest import NothingToTest
    from .sendtest import send_test as run_send_test

    _, config = _load(config_path)
    if channel is not None and channel not in config.channels:
        raise click.BadParameter(
            f"no channel {channel!r} in the configuration", param_hint="--channel"
        )
    try:
        results = asyncio.run(run_send_test(config, account, channel))
    except NothingToTest as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for r in results:
        reason = f" ({r.reason})" if r.reason else ""
        click.echo(f"{r.target}: {r.status}{reason} in {r.latency_ms:.0f} ms")
    sys.exit(0 if all(r.status == "delivered" for r in results) else 1)


@main.group()
def db() -> None:
    """ofnotify's own database."""


@db.command("upgrade")
@config_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(config_path: str | None, revision: str) -> None:
    """Apply schema migrations (`ofnotify run` does this by itself at start)."""
    from .migrate import current_revision, upgrade

    _, config = _load(config_path)

    async def go() -> str | None:
        engine = make_engine(config.storage.url)
        try:
            await upgrade(engine, revision)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"database schema at revision {asyncio.run(go())}")


def _print(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        click.echo(reports.table(rows, columns))


if __name__ == "__main__":
    main()
