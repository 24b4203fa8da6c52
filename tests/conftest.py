"""Shared pytest fixtures.

MinIO: ``minio`` (session) runs a real MinIO server built by ``scripts/setup-test-tools.sh``;
``s3_env`` (per test) points the standard AWS environment at it and gives the test a fresh
bucket. Without the binary the tests that use them skip, unless DISTILLERY_REQUIRE_MINIO=1.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------
# MinIO
# ------------------------------------------------------------------------------------------

MINIO_STARTUP_TIMEOUT_S = 60  # generous: the CI machine has 2 busy cores


def _minio_cache_path() -> Path | None:
    """Where scripts/setup-test-tools.sh caches the MinIO version pinned in tools/minio/go.mod."""
    go_mod = (REPO_ROOT / "tools" / "minio" / "go.mod").read_text()
    m = re.search(r"^\s*github\.com/minio/minio\s+(v\S+)", go_mod, re.MULTILINE)
    if not m:
        return None
    tools_dir = os.environ.get("DISTILLERY_TOOLS_DIR") or Path.home() / ".cache/distillery/tools"
    return Path(tools_dir) / f"minio-{m.group(1)}" / "bin" / "minio"


def _find_minio() -> tuple[Path | None, str]:
    """(binary, where we looked): DISTILLERY_MINIO_BIN if set, else the cache path."""
    env = os.environ.get("DISTILLERY_MINIO_BIN")
    path = Path(env) if env else _minio_cache_path()
    where = f"DISTILLERY_MINIO_BIN={env}" if env else str(path)
    if path is not None and path.is_file() and os.access(path, os.X_OK):
        return path, where
    return None, where


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Talk to the local server directly even if the environment sets an HTTP proxy.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(endpoint: str) -> bool:
    try:
        with _NO_PROXY.open(f"{endpoint}/minio/health/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class MinioServer:
    """A running MinIO server: where it is and the root credentials for it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    _buckets: int = field(default=0, repr=False)

    @functools.cached_property
    def client(self):
        """A boto3 S3 client logged in as the root user (for setup and checks in tests)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, prefix: str = "test") -> str:
        """Creates a new, empty bucket with a unique name and returns the name."""
        self._buckets += 1
        name = f"{prefix}-{self._buckets}-{secrets.token_hex(4)}".lower()
        self.client.create_bucket(Bucket=name)
        return name


def _start_minio(binary: Path, data_dir: Path, server: MinioServer | None = None,
                 console_port: int | None = None) -> tuple[subprocess.Popen, MinioServer, Path]:
    """Starts MinIO on data_dir: a new server on free ports, or `server` again (same port and
    credentials, e.g. after it was stopped)."""
    if server is None:
        server = MinioServer(
            endpoint=f"http://127.0.0.1:{_free_port()}",
            access_key=f"test-{secrets.token_hex(4)}",
            secret_key=secrets.token_urlsafe(24),
        )
    port = server.endpoint.rsplit(":", 1)[1]
    console_port = console_port or _free_port()
    env = {
        **os.environ,
        "MINIO_ROOT_USER": server.access_key,
        "MINIO_ROOT_PASSWORD": server.secret_key,
        "MINIO_UPDATE": "off",
        "MINIO_CI_CD": "1",  # relax checks meant for production drives
    }
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(binary), "server", str(data_dir), "--quiet",
                "--address", f"127.0.0.1:{port}",
                "--console-address", f"127.0.0.1:{console_port}",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, server, log_path


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def require_minio_binary() -> Path:
    """The built MinIO; skips when it is not built (fails under DISTILLERY_REQUIRE_MINIO=1)."""
    binary, where = _find_minio()
    if binary is None:
        reason = f"MinIO not built: run scripts/setup-test-tools.sh (looked at {where})"
        if os.environ.get("DISTILLERY_REQUIRE_MINIO") == "1":
            pytest.fail(f"DISTILLERY_REQUIRE_MINIO=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A real MinIO server for the whole session (skips if not built)."""
    binary = require_minio_binary()

    root = tmp_path_factory.mktemp("minio")
    failures = []
    for attempt in range(3):  # a free port can be taken before MinIO binds it; retry
        data_dir = root / f"data{attempt}"
        data_dir.mkdir()
        proc, server, log_path = _start_minio(binary, data_dir)
        deadline = time.monotonic() + MINIO_STARTUP_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline and not _healthy(server.endpoint):
            time.sleep(0.2)
        if proc.poll() is None and _healthy(server.endpoint):
            break
        _stop(proc)
        tail = log_path.read_text(errors="replace")[-2000:]
        failures.append(f"attempt {attempt + 1} (exit {proc.returncode}):\n{tail}")
    else:
        pytest.fail("MinIO did not become healthy:\n" + "\n".join(failures), pytrace=False)

    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture
def s3_env(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Points the standard AWS environment at the MinIO server; yields a fresh bucket's name."""
    for var in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", minio.endpoint)
    monkeypatch.setenv("AWS_REGION", minio.region)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    monkeypatch.setenv("NO_PROXY", no_proxy)
    yield minio.make_bucket()


# ------------------------------------------------------------------------------------------
# Shared model fixtures
# ------------------------------------------------------------------------------------------

from tests.digits import digits_workspace  # noqa: E402, F401 - a session fixture for trainer and cluster tests

# ------------------------------------------------------------------------------------------
# A restartable control plane for the fault figures (tests/faults) and the schema fuzz
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A control plane with the CRDs and the test node agent whose kube-apiserver a test may
    restart (tests/faults/cluster.py); skips like tests/cluster's when the binaries are missing."""
    from tests.faults.cluster import start_fault_cluster

    yield from start_fault_cluster(tmp_path_factory.mktemp("fault-control-plane"))


@pytest.fixture
def fault_namespace(fault_cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh restricted namespace on the fault cluster, deleted after the test."""
    from tests.faults.cluster import delete_namespace, make_namespace

    name = make_namespace(fault_cluster.cluster, request.node.name)
    yield name
    delete_namespace(fault_cluster.cluster, name)
