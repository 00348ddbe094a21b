"""The private PostgreSQL cluster and its fixtures."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.postgres import PostgresServer


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A cluster of its own, for tests that stop or restart it."""
    workdir = Path(tempfile.mkdtemp(prefix="ofnotify-pg-own-"))
    server = PostgresServer(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_async_engine_runs_select_1(postgres_db: str) -> None:
    assert postgres_db.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    engine = create_async_engine(postgres_db)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar_one() == 1
            database = (await conn.execute(text("select current_database()"))).scalar_one()
    finally:
        await engine.dispose()

    assert database == make_url(postgres_db).database


def test_psycopg_url_for_the_same_database(
    postgres_server: PostgresServer, postgres_db: str
) -> None:
    name = make_url(postgres_db).database
    assert name is not None
    engine = create_engine(postgres_server.url(name, driver="psycopg"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select current_database()")).scalar_one() == name
    finally:
        engine.dispose()


@pytest.mark.parametrize("attempt", [1, 2])
async def test_each_test_gets_a_fresh_database(postgres_db: str, attempt: int) -> None:
    # Would fail on the second run if the database were shared.
    engine = create_async_engine(postgres_db)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("create table marker (attempt int)"))
            await conn.execute(text("insert into marker values (:a)"), {"a": attempt})
            assert (await conn.execute(text("select count(*) from marker"))).scalar_one() == 1
    finally:
        await engine.dispose()


def test_cluster_is_private_and_fast(postgres_server: PostgresServer) -> None:
    with postgres_server.connect() as conn:
        settings = dict(
            conn.execute(
                "select name, setting from pg_settings where name in "
                "('listen_addresses', 'fsync', 'unix_socket_directories', 'port', 'server_version_num')"
            ).fetchall()
        )

    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["fsync"] == "off"
    assert settings["port"] == str(postgres_server.port)
    assert Path(settings["unix_socket_directories"]).is_relative_to(postgres_server.workdir)
    assert int(settings["server_version_num"]) >= 150000
    assert postgres_server.running
    if os.geteuid() == 0:
        assert postgres_server._proc is not None
        owner = Path(f"/proc/{postgres_server._proc.pid}").stat().st_uid
        assert owner == pwd.getpwnam("postgres").pw_uid


async def test_restart_keeps_port_and_data(own_server: PostgresServer) -> None:
    own_server.start()
    url = own_server.create_database("keep")
    port = own_server.port
    engine = create_async_engine(url, pool_pre_ping=True)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("create table t (v text)"))
            await conn.execute(text("insert into t values ('before restart')"))

        own_server.restart()

        assert own_server.port == port
        assert own_server.running
        # The pooled connection died with the old postmaster; pre-ping replaces it.
        async with engine.connect() as conn:
            assert (await conn.execute(text("select v from t"))).scalar_one() == "before restart"
    finally:
        await engine.dispose()


def test_stop_is_idempotent_and_start_again_works(own_server: PostgresServer) -> None:
    own_server.stop()  # never started
    own_server.start()
    own_server.stop()
    own_server.stop()

    assert not own_server.running
    own_server.start()
    assert "postgres" in own_server.databases()


def test_drop_database_disconnects_clients(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("to_drop")
    with postgres_server.connect("to_drop"):
        postgres_server.drop_database("to_drop")
    assert "to_drop" not in postgres_server.databases()


def test_missing_binaries_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        PostgresServer(tmp_path, bindir=tmp_path / "nowhere")


def test_unreachable_workdir_is_explained(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops privileges to the postgres user")
    # tmp_path lives under /tmp/pytest-of-root (0700), which postgres cannot traverse.
    server = PostgresServer(tmp_path / "pg")
    with pytest.raises(RuntimeError, match="cannot reach"):
        server.start()
