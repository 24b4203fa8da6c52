"""The trainer pod's entry point stops at once on SIGTERM, with exit code 1 (retried) and a line
saying why. In a container it is PID 1, which the kernel does not stop for signals it has no
handler for: without one, `kubectl delete pod` would wait out the grace period while it trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.digits import digits_job_document


def test_sigterm_stops_a_training_run_with_exit_code_1(digits_workspace, tmp_path):
    out = tmp_path / "out"
    doc = digits_job_document(digits_workspace, out, distillation={"epochs": 200, "batchSize": 8})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    trainer = Path(sys.executable).parent / "distillery-trainer"
    proc = subprocess.Popen([str(trainer), "--spec", str(tmp_path / "job.yaml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints").is_dir():  # training has started
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (proc.returncode, stderr[-2000:])
    assert "terminated (SIGTERM)" in stderr
    assert not (out / "result.json").exists()
