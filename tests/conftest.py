"""Shared fixtures: a real mosquitto on a free [::1] port, a real PostgreSQL, the repo root."""

from __future__ import annotations

import contextlib
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from gateway.mosquitto import Mosquitto
from gateway.pgserver import PgServer

if TYPE_CHECKING:
    from gateway.receiver import Store

REPO = Path(__file__).resolve().parents[1]

if REPO.name == "mutants":
    # `make mutate` runs the tests from mutmut's copy, traced and on a loaded machine: a
    # hypothesis deadline there fails a test (and "kills" a mutant) for its timing alone.
    settings.register_profile("mutmut", deadline=None)
    settings.load_profile("mutmut")


@pytest.fixture(autouse=True)
def status_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons started by tests (in this process or as children, which inherit the
    environment) write their status at most every second while things change, as they
    did before the default became 5 s: tests that watch status.json see a change within a
    second. tests/gateway/test_idle_wakeups.py removes it to test the default."""
    monkeypatch.setenv("EDGEGW_STATUS_EVERY_S", "1")


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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each receiver store in turn: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "rx.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    from gateway.receiver import open_store  # lazily: most tests need no receiver

    s = open_store(store_url)
    yield s
    s.close()


@contextlib.contextmanager
def traversable(*paths: Path) -> Iterator[None]:
    """Let other users enter the directories above ``paths`` (add o+x where it is missing)
    while the block runs, then put every mode back. A CI runner may clone the repository
    into a 0700 directory, and the tests that run as ``nobody`` need the repository and
    its venv."""
    changed: list[tuple[Path, int]] = []
    try:
        for p in paths:
            for d in [p, *p.parents]:
                try:
                    st = d.stat()
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
                    d.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                    changed.append((d, stat.S_IMODE(st.st_mode)))
        yield
    finally:
        for d, mode in reversed(changed):
            with contextlib.suppress(OSError):
                d.chmod(mode)


@pytest.fixture(scope="module")
def reachable_by_others() -> Iterator[None]:
    """The repository and the interpreter can be used by an unprivileged user."""
    with traversable(REPO, Path(sys.executable).parent):
        yield
