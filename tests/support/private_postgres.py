"""A PostgreSQL cluster of a test's own, on a free port, that the test may stop and start.

Outage tests must not stop the shared server on 5432 (other tests and people use it), so
they run ``initdb`` into a temporary directory and drive that cluster with ``pg_ctl``:
``stop("immediate")`` is a crash as far as clients can tell (connections cut, nothing
flushed; the next start runs crash recovery, refusing connections meanwhile with
``CannotConnectNowError``). As root the binaries run as the ``postgres`` user (``initdb``
refuses root); the cluster is always stopped and removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port, require_service


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@dataclass
class PrivatePostgres:
    """One throw-away cluster: ``url`` for SQLAlchemy, ``stop``/``start`` for outages."""

    root: Path
    binaries: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        """The cluster's ``postgres`` database for asyncpg."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.binaries / "pg_ctl"), "-D", str(self.root / "data"), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    def init(self) -> None:
        """``initdb`` with trust authentication."""
        subprocess.run(
            [
                *self.run_as,
                str(self.binaries / "initdb"),
                *("-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=100"
        )
        self._pg_ctl("-o", options, "-l", str(self.root / "postgres.log"), "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the cluster; ``immediate`` cuts every connection with no shutdown checkpoint."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        """Whether the postmaster runs."""
        return (self.root / "data" / "postmaster.pid").exists()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private cluster for one test; stopped and deleted afterwards."""
    from tests.support.markers import expect_marker

    expect_marker("postgres", "a private PostgreSQL cluster")
    binaries = postgres_binaries()
    require_service(binaries is not None, "PostgreSQL's initdb/pg_ctl are not installed")
    assert binaries is not None
    root = Path(tempfile.mkdtemp(prefix="ferry-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    cluster = PrivatePostgres(root=root, binaries=binaries, port=free_port(), run_as=run_as)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
