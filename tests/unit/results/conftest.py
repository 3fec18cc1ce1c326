"""The results store's back ends for the tests: SQLite in a temporary folder, and a real
PostgreSQL server started for the session (initdb + pg_ctl of Debian's ``postgresql``, on a
unix socket in a temporary folder, as the ``postgres`` user when the tests run as root), with
a new database per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_socket() -> Iterator[Path]:
    """The folder of a running PostgreSQL server's unix socket (user ``postgres``, trust)."""
    if not PG_BINS:
        pytest.fail("no PostgreSQL server in /usr/lib/postgresql: install Debian's postgresql")
    bin_dir = PG_BINS[-1]
    base = Path(tempfile.mkdtemp(prefix="vfio-hil-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data = base / "data"
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                      "--auth=trust", "--no-sync"]),
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-k {base} -c listen_addresses= -c fsync=off -c max_connections=50"
    pg_ctl = str(bin_dir / "pg_ctl")
    subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", options, "-w",
                      "start"]),
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield base
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store, on each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'results.db'}"
    socket = request.getfixturevalue("postgres_socket")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=str(socket), user="postgres", dbname="postgres", autocommit=True
    ) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={socket}"
