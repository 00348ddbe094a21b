"""The compose stack's PostgreSQL side, on a real PostgreSQL cluster of its own.

- deploy/postgres-init.sh (what the postgres image runs on an empty volume) creates the
  roles and databases and the event trigger; Openfire's first start is then played by
  creating Openfire's tables as its role, and ofnotify's real watcher queries run as
  ofnotify_ro: they work, and everything else is refused;
- openfire-config/ofproperty.sql and readonly-account.postgresql.sql do what
  openfire-config/README.md says, refuse what it says they refuse, and can run twice.

The cluster is not the shared session one: the scripts create cluster-wide roles.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from component import openfire
from component.store import create_schema, make_engine
from tests.support.openfire_db import OPENFIRE_TABLES, OpenfireDb
from tests.support.postgres import PostgresServer, find_bindir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INIT_SCRIPT = ROOT / "deploy" / "postgres-init.sh"
OFPROPERTY_SQL = ROOT / "openfire-config" / "ofproperty.sql"
READONLY_SQL = ROOT / "openfire-config" / "readonly-account.postgresql.sql"

# Openfire's own DDL for the table holding system properties (openfire_postgresql.sql).
OFPROPERTY_TABLE = """
CREATE TABLE ofProperty (
  name        VARCHAR(100) NOT NULL,
  propValue   VARCHAR(4000) NOT NULL,
  encrypted   INTEGER,
  iv          CHAR(24),
  CONSTRAINT ofProperty_pk PRIMARY KEY (name)
);
"""
# One more table Openfire creates, to see that it is not granted.
OTHER_TABLE = "CREATE TABLE ofVCard (username VARCHAR(64) NOT NULL, vcard TEXT NOT NULL)"


class Cluster:
    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.bindir = find_bindir()

    def conninfo(self, role: str, database: str) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.server.port}/{database}"

    def connect(self, role: str, database: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.conninfo(role, database), autocommit=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # The psql of the server's own version (\getenv needs psql 15 or later).
        env["PATH"] = f"{self.bindir}{os.pathsep}{env.get('PATH', '')}"
        env.update(PGHOST="127.0.0.1", PGPORT=str(self.server.port), **extra)
        return env

    def psql(
        self, role: str, database: str, script: Path, **variables: str
    ) -> subprocess.CompletedProcess[str]:
        command = ["psql", "--no-psqlrc", "-d", self.conninfo(role, database)]
        for name, value in variables.items():
            command += ["-v", f"{name}={value}"]
        return subprocess.run(
            [*command, "-f", str(script)],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="ofnotify-pg-deploy-"))
    server = PostgresServer(workdir)
    try:
        server.start()
        yield Cluster(server)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def initialised(cluster: Cluster) -> Cluster:
    """The volume's first start: the init script, then Openfire creating its schema."""
    result = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.env(
            POSTGRES_USER="postgres",
            OPENFIRE_DB_PASSWORD="openfire-pw",
            OFNOTIFY_DB_PASSWORD="ofnotify-pw",
            OFNOTIFY_RO_PASSWORD="readonly-pw",
        ),
    )
    assert result.returncode == 0, result.stderr
    with cluster.connect("openfire", "openfire") as conn:
        conn.execute(OPENFIRE_TABLES)
        conn.execute(OFPROPERTY_TABLE)
        conn.execute(OTHER_TABLE)
    db = OpenfireDb(cluster.conninfo("openfire", "openfire"), "example.test")
    db.add_user("jenny", "Jenny", "jenny@example.test")
    db.user_logged_out("jenny")
    db.store_chat("jenny", "michael", "Hi", "m1")
    return cluster


def test_init_script_refuses_to_run_without_the_passwords(cluster: Cluster) -> None:
    result = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.env(POSTGRES_USER="postgres", OPENFIRE_DB_PASSWORD="x"),
    )
    assert result.returncode != 0
    assert "OFNOTIFY_DB_PASSWORD is not set" in result.stderr


def test_the_databases_belong_to_their_services(initialised: Cluster) -> None:
    with initialised.connect("postgres", "postgres") as conn:
        owners = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                "WHERE datname IN ('openfire', 'ofnotify')"
            ).fetchall()
        )
        readonly = conn.execute(
            "SELECT rolconfig FROM pg_roles WHERE rolname = 'ofnotify_ro'"
        ).fetchone()
    assert owners == {"openfire": "openfire", "ofnotify": "ofnotify"}
    assert readonly is not None and "default_transaction_read_only=on" in readonly[0]


async def test_the_watcher_reads_what_it_needs_as_ofnotify_ro(initialised: Cluster) -> None:
    engine = make_engine(initialised.conninfo("ofnotify_ro", "openfire"))
    try:
        async with engine.connect() as conn:
            high = await openfire.max_message_id(conn)
            keys, rows = await openfire.recent_rows(conn, 0, 0)
            late = await openfire.stanzas(conn, [(u, m) for u, m, _ in keys])
            blocks = await openfire.heap_blocks(conn)
            scanned = await openfire.created_in_blocks(conn, 0, None, 0)
            present = await openfire.present_keys(conn, ["jenny"])
            stored = await openfire.still_stored(conn, [("jenny", 1), ("jenny", 2)])
            info = await openfire.user_info(conn, "jenny")
            offline = await openfire.is_offline(conn, "jenny")
    finally:
        await engine.dispose()
    assert high == 1
    assert [(r.username, r.message_id) for r in rows] == [("jenny", 1)]
    assert late == rows
    assert blocks >= 1 and [(u, m) for u, m, _ in scanned] == [("jenny", 1)]
    assert "<body>Hi</body>" in rows[0].stanza
    assert present == stored == {("jenny", 1)}
    assert info == openfire.UserInfo("Jenny", "jenny@example.test")
    assert offline is True


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT plainPassword FROM ofUser",
        "SELECT encryptedPassword FROM ofUser",
        "SELECT * FROM ofUser",
        "SELECT * FROM ofProperty",
        "SELECT * FROM ofVCard",
        "DELETE FROM ofOffline",
        "INSERT INTO ofPresence (username, offlineDate) VALUES ('x', '0')",
    ],
)
def test_ofnotify_ro_can_do_nothing_else(initialised: Cluster, statement: str) -> None:
    with initialised.connect("ofnotify_ro", "openfire") as conn, pytest.raises(psycopg.Error):
        conn.execute(statement)


def test_ofnotify_ro_cannot_reach_ofnotifys_database(initialised: Cluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        initialised.connect("ofnotify_ro", "ofnotify")


async def test_ofnotify_creates_its_schema_in_its_own_database(initialised: Cluster) -> None:
    engine = make_engine(initialised.conninfo("ofnotify", "ofnotify"))
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()
    with initialised.connect("ofnotify", "ofnotify") as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert {"outbox", "delivery_log"} <= tables


def component_properties(cluster: Cluster) -> dict[str, tuple[object, ...]]:
    with cluster.connect("postgres", "openfire") as conn:
        rows = conn.execute(
            "SELECT name, propValue, encrypted, iv FROM ofProperty "
            "WHERE name LIKE 'xmpp.component.%'"
        ).fetchall()
    return {str(r[0]): tuple(r[1:]) for r in rows}


def test_ofproperty_sql_sets_the_component_properties(initialised: Cluster) -> None:
    with initialised.connect("postgres", "openfire") as conn:
        conn.execute(
            "INSERT INTO ofProperty VALUES ('xmpp.component.defaultSecret', 'old', 1, "
            "'abcdefabcdefabcdefabcdef') ON CONFLICT (name) DO UPDATE "
            "SET propValue = 'old', encrypted = 1, iv = 'abcdefabcdefabcdefabcdef'"
        )
    secret = "s'e\"c;r&t $x :y"
    first = initialised.psql("postgres", "openfire", OFPROPERTY_SQL, secret=secret)
    assert first.returncode == 0, first.stderr
    assert component_properties(initialised) == {
        "xmpp.component.socket.active": ("true", 0, None),
        "xmpp.component.socket.port": ("5275", 0, None),
        "xmpp.component.defaultSecret": (secret, 0, None),
        "xmpp.component.permission": ("blacklist", 0, None),
    }
    assert secret not in first.stdout  # the summary does not print it
    again = initialised.psql(
        "postgres", "openfire", OFPROPERTY_SQL, secret="new", port="5276", permission="whitelist"
    )
    assert again.returncode == 0, again.stderr
    props = component_properties(initialised)
    assert props["xmpp.component.defaultSecret"][0] == "new"
    assert props["xmpp.component.socket.port"][0] == "5276"
    assert props["xmpp.component.permission"][0] == "whitelist"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "no secret given"),
        ({"secret": ""}, "the secret is empty"),
        ({"secret": "x", "port": "70000"}, "port must be a TCP port"),
        ({"secret": "x", "port": "abc"}, "port must be a TCP port"),
        ({"secret": "x", "permission": "allow"}, "permission must be blacklist or whitelist"),
    ],
)
def test_ofproperty_sql_refuses_bad_values(
    initialised: Cluster, variables: dict[str, str], message: str
) -> None:
    before = component_properties(initialised)
    result = initialised.psql("postgres", "openfire", OFPROPERTY_SQL, **variables)
    assert result.returncode != 0
    assert message in result.stderr
    assert component_properties(initialised) == before


def test_ofproperty_sql_refuses_while_openfire_is_connected(initialised: Cluster) -> None:
    before = component_properties(initialised)
    with initialised.connect("openfire", "openfire"):  # Openfire's connection pool
        refused = initialised.psql("postgres", "openfire", OFPROPERTY_SQL, secret="changed")
        assert refused.returncode != 0
        assert "stop it first" in refused.stderr
        assert component_properties(initialised) == before
        forced = initialised.psql(
            "postgres", "openfire", OFPROPERTY_SQL, secret="changed", force="1"
        )
        assert forced.returncode == 0, forced.stderr
    assert component_properties(initialised)["xmpp.component.defaultSecret"][0] == "changed"


def test_readonly_account_sql_on_an_existing_openfire(initialised: Cluster) -> None:
    """An Openfire that was set up without the compose stack: tables first, then the script."""
    with initialised.connect("postgres", "postgres") as conn:
        conn.execute("CREATE ROLE legacy_openfire LOGIN")
        conn.execute("CREATE DATABASE legacy OWNER legacy_openfire")
    with initialised.connect("legacy_openfire", "legacy") as conn:
        conn.execute(OPENFIRE_TABLES)
        conn.execute(OFPROPERTY_TABLE)
    missing = initialised.psql("postgres", "legacy", READONLY_SQL)
    assert missing.returncode != 0
    assert "run with -v password=" in missing.stderr
    for _ in range(2):  # runs again without complaint
        result = initialised.psql("postgres", "legacy", READONLY_SQL, password="pw'1")
        assert result.returncode == 0, result.stderr
    with initialised.connect("ofnotify_ro", "legacy") as conn:
        conn.execute("SELECT username, name, email FROM ofUser")
        conn.execute("SELECT * FROM ofOffline")
        conn.execute("SELECT * FROM ofPresence")
        for statement in ("SELECT * FROM ofProperty", "SELECT plainPassword FROM ofUser"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
