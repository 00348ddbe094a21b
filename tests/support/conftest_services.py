"""pytest fixtures for the local FCM stand-in and a private PostgreSQL cluster.

Pull them into a conftest.py with::

    from tests.support.conftest_services import *  # noqa: F403
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from tests.support.fake_fcm import FakeFcm
from tests.support.openfire_db import OpenfireDb
from tests.support.postgres import PostgresServer
from tests.support.smtp_server import SmtpServer

__all__ = ["fake_fcm", "openfire_db", "postgres_db", "postgres_server", "smtp"]

# Prosody's domain doubles as Openfire's in tests that use both.
OPENFIRE_TEST_DOMAIN = "example.test"


@pytest.fixture
def fake_fcm(tmp_path: Path) -> Iterator[FakeFcm]:
    """A started FakeFcm for project "test-project"; ``service_account_path`` is set."""
    with FakeFcm(project_id="test-project") as fake:
        fake.write_service_account(tmp_path / "fcm-service-account.json")
        yield fake


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One cluster for the whole session; missing binaries are an error, not a skip."""
    # Not tmp_path_factory: /tmp/pytest-of-root is 0700 and the cluster runs as the
    # postgres user, which must traverse every parent directory.
    workdir = Path(tempfile.mkdtemp(prefix="ofnotify-pg-"))
    server = PostgresServer(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database; yields its ``postgresql+asyncpg://`` URL.

    The name is ``sqlalchemy.make_url(url).database``; other drivers via
    ``postgres_server.url(name, "psycopg")``.
    """
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    if not postgres_server.running:
        # The test stopped the shared cluster; bring it back for the tests after it.
        postgres_server.start()
    postgres_server.drop_database(name)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A capturing SMTP server (aiosmtpd) on a free loopback port."""
    with SmtpServer() as server:
        yield server


@pytest.fixture
def openfire_db(postgres_server: PostgresServer, postgres_db: str) -> OpenfireDb:
    """Openfire's tables in a fresh database, with users jenny, michael and soyeon."""
    name = make_url(postgres_db).database
    db = OpenfireDb(postgres_server.url(name, None), OPENFIRE_TEST_DOMAIN)
    db.create_tables()
    db.add_user("jenny", "Jenny", "jenny@mail.example")
    db.add_user("michael", "Michael", "michael@mail.example")
    db.add_user("soyeon", "소연", "soyeon@mail.example")
    return db
