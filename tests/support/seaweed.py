"""Real S3 servers for tests: SeaweedFS (``weed mini``) and moto's server.

Both are started once per test session on free loopback ports and stopped by PID at the
end. SeaweedFS is the S3 every S3 test runs against; moto's server enforces AWS's rules
(5 MiB minimum part size) that SeaweedFS does not.

Credentials: ``weed mini`` creates an admin identity from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in its environment and then refuses anonymous requests, so the
tests sign like production does. moto accepts any credentials.

Use from any test::

    async def test_x(make_s3_settings): settings = make_s3_settings(); ...

``make_s3_settings(**overrides)`` builds migrated-or-not :class:`Settings` with
``FERRY_STORAGE=s3`` and a key prefix of its own, on top of ``make_settings``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config

from app.settings import Settings
from tests.support.markers import expect_marker
from tests.support.services import PROJECT_ROOT, free_port, require_service

WEED = PROJECT_ROOT / ".venv" / "bin" / "weed"
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Endpoint:
    """Where a test S3 server listens and how to sign for it."""

    url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    def settings_overrides(self, prefix: str) -> dict[str, Any]:
        """``Settings`` fields that point Ferry at this server under ``prefix``."""
        return {
            "storage": "s3",
            "s3_endpoint_url": self.url,
            "s3_access_key": self.access_key,
            "s3_secret_key": self.secret_key,
            "s3_bucket": self.bucket,
            "s3_region": self.region,
            "s3_prefix": prefix,
        }

    def env(self, prefix: str) -> dict[str, str]:
        """The same as ``FERRY_*`` environment variables, for a ``ferry serve`` process."""
        return {f"FERRY_{k.upper()}": str(v) for k, v in self.settings_overrides(prefix).items()}

    def client(self) -> Any:
        """A blocking botocore S3 client, for test assertions."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 3},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def _wait_for_bucket(endpoint: S3Endpoint, process: subprocess.Popen[bytes], log: Path) -> None:
    client = endpoint.client()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"S3 server exited early:\n{log.read_text()[-3000:]}")
        try:
            client.head_bucket(Bucket=endpoint.bucket)
            return
        except Exception as exc:
            last_error = exc
        time.sleep(0.25)
    tail = log.read_text()[-3000:]
    raise RuntimeError(f"S3 server did not answer in time ({last_error!r}):\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def run_seaweedfs(work_dir: Path, bucket: str = "ferry-test") -> Iterator[S3Endpoint]:
    """Run ``weed mini`` on free loopback ports (telemetry and admin UI off)."""
    data_dir = work_dir / "seaweed"
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "ferrytest", "ferrytestsecret"
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "debug.port",
        )
    }
    command = [
        str(WEED),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-bucket={bucket}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    log = work_dir / "seaweed.log"
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            command, env=env, cwd=work_dir, stdout=log_file, stderr=subprocess.STDOUT
        )
    endpoint = S3Endpoint(
        url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        bucket=bucket,
    )
    try:
        _wait_for_bucket(endpoint, process, log)
        yield endpoint
    finally:
        _stop(process)


@contextlib.contextmanager
def run_moto(bucket: str = "ferry-moto") -> Iterator[S3Endpoint]:
    """Run moto's S3 server (which enforces AWS's part-size rules) in this process."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = S3Endpoint(
        url=f"http://127.0.0.1:{port}", access_key="moto", secret_key="moto", bucket=bucket
    )
    try:
        endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One SeaweedFS S3 server for the whole session."""
    expect_marker("s3", "the SeaweedFS S3 server")
    require_service(WEED.exists() and shutil.which(str(WEED)) is not None, f"{WEED} is missing")
    with run_seaweedfs(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Endpoint]:
    """moto's S3 server for the whole session (AWS's 5 MiB minimum part rule)."""
    expect_marker("s3", "the moto S3 server")
    try:
        import moto.server  # noqa: F401
    except ImportError:
        require_service(False, "moto[server] is not installed")
    with run_moto() as endpoint:
        yield endpoint


MakeS3Settings = Callable[..., Settings]


@pytest.fixture
def s3_prefix() -> str:
    """A key prefix of this test's own, so tests sharing the server never see each other."""
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def make_s3_settings(make_settings: Any, seaweed: S3Endpoint, s3_prefix: str) -> MakeS3Settings:
    """Like ``make_settings`` but storing in the session's SeaweedFS."""

    def build(**overrides: Any) -> Settings:
        values = seaweed.settings_overrides(s3_prefix)
        values.update(overrides)
        built: Settings = make_settings(**values)
        return built

    return build
