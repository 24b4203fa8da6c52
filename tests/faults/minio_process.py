"""A MinIO server that a test can kill and start again on the same port, data and credentials."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import (
    MINIO_STARTUP_TIMEOUT_S,
    MinioServer,
    _healthy,
    _start_minio,
    _stop,
    require_minio_binary,
)


class RestartableMinio:
    def __init__(self, binary: Path, data_dir: Path):
        self.binary, self.data_dir = binary, data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.server: MinioServer | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> MinioServer:
        self.proc, self.server, log_path = _start_minio(self.binary, self.data_dir, server=self.server)
        deadline = time.monotonic() + MINIO_STARTUP_TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            if _healthy(self.server.endpoint):
                return self.server
            time.sleep(0.1)
        _stop(self.proc)
        raise AssertionError(f"MinIO did not become healthy:\n{log_path.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def restartable_minio(root: Path) -> RestartableMinio:
    """Started; skips (or fails under DISTILLERY_REQUIRE_MINIO=1) when MinIO is not built."""
    binary = require_minio_binary()
    minio = RestartableMinio(binary, root / "data")
    minio.start()
    return minio
