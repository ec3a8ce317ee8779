"""A real PostgreSQL server for the scale-out tests.

`.ci/run` starts one in a throwaway data directory and exports ``SEARCH_POSTGRES_URL`` (a
superuser on loopback) and ``SEARCH_POSTGRES_DATA``; without them, one is started here the same
way. Where PostgreSQL is not installed (or cannot run) the tests are skipped with the reason,
unless ``SEARCH_REQUIRE_POSTGRES=1`` (as in `.ci/run`) turns that into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_owner(data: Path) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the data directory's owner."""
    if os.geteuid() != 0:
        return []
    owner = data.owner()
    return [] if owner == "root" else ["runuser", "-u", owner, "--"]


@dataclass
class Postgres:
    url: str  # the server, database "postgres"
    data: Path

    def database(self) -> str:
        """A new, empty database on the server; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sqlalchemy.create_engine(_driver(self.url), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def restart(self) -> None:
        """Stop the server (fast: clients are cut off) and start it again."""
        subprocess.run(
            [*_as_owner(self.data), _bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
             "restart", "-l", str(self.data / "server.log")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


def _driver(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def start(folder: Path) -> Postgres:
    """initdb a throwaway data directory under ``folder`` and start a server on loopback."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    data = folder / "pgdata"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_as = _as_owner(data)
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data}"
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(data / "server.log"),
         "start"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return Postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", data)


def stop(server: Postgres) -> None:
    subprocess.run(
        [*_as_owner(server.data), _bin("pg_ctl"), "-D", str(server.data), "-m", "immediate",
         "stop"],
        check=False, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="session")
def postgres():
    url, data = os.environ.get("SEARCH_POSTGRES_URL"), os.environ.get("SEARCH_POSTGRES_DATA")
    if url and data:
        yield Postgres(url, Path(data))
        return
    # Not under pytest's temporary root: that is private to its user, and the server runs as
    # the postgres user when the tests run as root.
    folder = Path(tempfile.mkdtemp(prefix="search-postgres-"))
    try:
        server = start(folder)
    except (RuntimeError, OSError, subprocess.SubprocessError, LookupError) as e:
        reason = f"no PostgreSQL server could be started: {e}"
        if os.environ.get("SEARCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    yield server
    stop(server)
    shutil.rmtree(folder, ignore_errors=True)
