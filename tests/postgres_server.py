"""A real PostgreSQL server for the tests, from Debian's binaries, on a free port.

``initdb`` and ``pg_ctl`` run in a temporary directory (as the ``postgres`` user when the suite runs
as root: initdb refuses root). With DATABASE_URL set the tests use that server instead. Either way
every test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.conftest import free_port

SERVICE_USER = "postgres"


def _binary(name: str) -> str:
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    found = shutil.which(name) or (debian[-1] if debian else None)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: run bin/ensure-test-tools (make test does), which installs "
            "Debian's postgresql package"
        )
    return found


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory that can be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.directory = tempfile.mkdtemp(prefix="llm-gateway-pg-")
        self.data = os.path.join(self.directory, "data")
        self.running = False
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, SERVICE_USER)
            self._as_user = ["runuser", "-u", SERVICE_USER, "--"]

    @property
    def url(self) -> str:
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(_binary("initdb"), "-D", self.data, "-U", SERVICE_USER, "--auth=trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")  # fmt: skip
        self._run(_binary("pg_ctl"), "-D", self.data, "-o", options, "-w", "-t", "30",
                  "-l", os.path.join(self.directory, "log"), "start")  # fmt: skip
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run(_binary("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
            self.running = False


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """The suite's own PostgreSQL (None when DATABASE_URL points elsewhere)."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    server = PostgresServer(free_port())
    server.init()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def psql(url: str, sql: str) -> None:
    """Run one statement with Debian's psql client."""
    subprocess.run([_binary("psql"), url, "-v", "ON_ERROR_STOP=1", "-qc", sql],
                   check=True, capture_output=True, timeout=30)  # fmt: skip


@pytest.fixture
def postgres_url(postgres_server: PostgresServer | None) -> Iterator[str]:
    """The URL of a fresh database of this test's own, on a server that is up."""
    if postgres_server is not None and not postgres_server.running:
        postgres_server.start()
    admin = postgres_server.url if postgres_server else os.environ["DATABASE_URL"]
    name = "t_" + uuid.uuid4().hex[:12]
    psql(admin, f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    if postgres_server is not None and not postgres_server.running:
        postgres_server.start()
    psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    """Run one query on a database (for assertions)."""
    connection = await asyncio.wait_for(asyncpg.connect(url), 10)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()
