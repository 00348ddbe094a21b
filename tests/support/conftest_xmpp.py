"""Pytest fixtures for real XMPP servers; import with ``from tests.support.conftest_xmpp import *``.

Missing server binaries make these fixtures error out instead of skipping: CI installs
prosody, prosody-modules and ejabberd, so a skip would only hide a broken setup.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.xmpp_servers import EjabberdServer, ProsodyServer, XmppServer

__all__ = ["SERVER_CLASSES", "ejabberd", "prosody", "xmpp_server"]

SERVER_CLASSES: dict[str, type[XmppServer]] = {
    "prosody": ProsodyServer,
    "ejabberd": EjabberdServer,
}


def _run_server(kind: str, workdir: Path) -> Iterator[XmppServer]:
    server = SERVER_CLASSES[kind](workdir / kind)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[XmppServer]:
    """A started Prosody on free loopback ports, with component ``push.example.test``."""
    yield from _run_server("prosody", tmp_path)


@pytest.fixture
def ejabberd(tmp_path: Path) -> Iterator[XmppServer]:
    """A started ejabberd on free loopback ports, with component ``push.example.test``."""
    yield from _run_server("ejabberd", tmp_path)


@pytest.fixture(params=list(SERVER_CLASSES), ids=list(SERVER_CLASSES))
def xmpp_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[XmppServer]:
    """Each test using it runs once against Prosody and once against ejabberd."""
    yield from _run_server(request.param, tmp_path)
