"""Issue 5.4: Alembic migrations from an empty database and from the previous schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from component.cli import main
from component.migrate import current_revision, upgrade
from component.store import Base, make_engine
from tests.support.postgres import PostgresServer
from tests.unit.test_config import valid

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer
) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        url = postgres_server.create_database(f"mig_{uuid.uuid4().hex[:12]}")
    engine = make_engine(url)
    yield engine
    await engine.dispose()


async def test_empty_database_to_head_matches_the_models(engine: AsyncEngine) -> None:
    await upgrade(engine)
    assert await current_revision(engine) == "0002"
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert diff == []
    await upgrade(engine)  # idempotent


async def test_previous_schema_with_data_upgrades(engine: AsyncEngine) -> None:
    await upgrade(engine, "0001")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO registrations (id, account, device_id, muc, channel, token, node, "
                "secret, created_at, updated_at) VALUES (1, 'a@x', 'd', '', 'phone', 't', 'n', "
                "'s', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO outbox (id, dedup_key, event, account, channel, registration_id, "
                "conversation, payload, status, created_at, due_at, attempts) VALUES (7, 'k', "
                "'offline_message', 'a@x', 'phone', 1, 'b@x', '{}', 'pending', "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 0)"
            )
        )
    await upgrade(engine)
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT id, source, status FROM outbox"))).one()
        registrations = (await conn.execute(text("SELECT count(*) FROM registrations"))).scalar()
    assert tuple(row) == (7, "xep0357", "pending")
    assert registrations == 1


def test_cli_db_upgrade(tmp_path: Path) -> None:
    sa = tmp_path / "fcm.json"
    sa.write_text("{}")
    config = tmp_path / "of.yaml"
    config.write_text(valid(sa).replace("sqlite:///ofnotify.db", f"sqlite:///{tmp_path}/c.db"))
    result = CliRunner().invoke(
        main, ["db", "upgrade", "--config", str(config)], env={"OFNOTIFY_SECRET": "x"}
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "database schema at revision 0002"
