"""Run a private PostgreSQL on a free loopback port (tests, benchmarks).

Uses the server binaries of Debian's ``postgresql`` package. PostgreSQL refuses to run as
root, so as root the cluster is made and run by an unprivileged user (``nobody``) in a
directory that user owns. Only loopback addresses: ``::1`` and a Unix socket in the data
directory. Authentication is ``trust`` (a throwaway cluster on loopback, never a service).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .mosquitto import free_port, wait_listening


class PgError(RuntimeError):
    pass


def find_pg_bin() -> Path:
    """The directory of initdb and pg_ctl (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return Path(found[0]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).resolve().parent
    raise PgError(
        "PostgreSQL is not installed: run `make setup` (it installs the Debian package "
        "'postgresql'), or `sudo apt-get install postgresql`"
    )


@dataclass
class PgServer:
    """One PostgreSQL cluster. ``start()`` waits until it accepts connections; ``stop()``
    and ``start()`` again restart the same cluster (its data is kept until ``remove()``)."""

    host: str = "::1"
    port: int = 0
    user: str = "edgegw"  # the cluster's superuser
    dbname: str = "edgegw"
    extra_conf: str = ""
    datadir: Path | None = None
    run_as: str | None = None  # OS user; "nobody" when we are root
    _created: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@[{self.host}]:{self.port}/{self.dbname}"

    def _cmd(self, *argv: str) -> list[str]:
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *argv]
        return list(argv)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        r = subprocess.run(self._cmd(*argv), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise PgError(f"{' '.join(argv[:2])} failed ({r.returncode}): {r.stderr.strip()}")

    def init(self) -> PgServer:
        bindir = find_pg_bin()
        if self.run_as is None and os.geteuid() == 0:
            self.run_as = "nobody"
        if self.datadir is None:
            # /tmp itself: a directory under root's private pytest tmp is not reachable by
            # the unprivileged user.
            self.datadir = Path(tempfile.mkdtemp(prefix="edgegw-pg-")) / "data"
        base = self.datadir.parent
        base.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(base, pw.pw_uid, pw.pw_gid)
            base.chmod(0o755)
        self._run(
            str(bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )
        if self.port == 0:
            self.port = free_port(self.host)
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(
                f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.datadir}'\n"
                "max_connections = 100\nshared_buffers = 64MB\n"
                "log_min_messages = warning\n" + self.extra_conf
            )
        self._created = True
        return self

    def start(self) -> PgServer:
        if not self._created:
            self.init()
        assert self.datadir is not None
        bindir = find_pg_bin()
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.datadir.parent / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        wait_listening(self.host, self.port, 30)
        self._ensure_db()
        return self

    def _ensure_db(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"postgresql://{self.user}@[{self.host}]:{self.port}/postgres"
                with psycopg.connect(url, autocommit=True) as c:
                    if not c.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)
                    ).fetchone():
                        c.execute(f'CREATE DATABASE "{self.dbname}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (disconnect clients, clean shutdown) or ``immediate`` (like a crash)."""
        if self.datadir is None or not (self.datadir / "postmaster.pid").exists():
            return
        bindir = find_pg_bin()
        self._run(str(bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        if self.datadir is not None:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
