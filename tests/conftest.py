"""Shared fixtures: a real mosquitto on a free [::1] port, a real PostgreSQL, the repo root."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mosquitto import Mosquitto
from gateway.pgserver import PgServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto listening on [::1] only; stopped after the test."""
    with Mosquitto(host="::1", workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL (Debian's package) for the session, run as an unprivileged
    user on a free [::1] port."""
    with PgServer() as s:
        yield s


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = pg_server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
