"""SIGTERM and SIGINT end a run cleanly: one line, no traceback, progress.json says
"interrupted", the temporary work folder is removed, exit 1 (SIGTERM, retried) or 130 (SIGINT),
and running again resumes from the last checkpoint.

In a container the trainer is PID 1, which the kernel does not stop for signals it has no
handler for: without one, `kubectl delete pod` would wait out the grace period while it trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.digits import digits_job_document


def start(cmd: list[str], tmp: Path) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}  # the run's temp folder goes here
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the run never reached {what}"
        time.sleep(0.2)


def work_folders(tmp: Path) -> list[Path]:
    return [p for p in tmp.iterdir() if p.name.startswith("distillery-")]


def test_sigterm_stops_the_trainer_with_exit_code_1(digits_workspace, tmp_path):
    out = tmp_path / "out"
    doc = digits_job_document(digits_workspace, out, distillation={"epochs": 200, "batchSize": 8})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    trainer = Path(sys.executable).parent / "distillery-trainer"
    termination = tmp_path / "termination-log"
    proc = start([str(trainer), "--spec", str(tmp_path / "job.yaml"), "--termination-log", str(termination)],
                 tmp_path / "tmp")
    try:
        wait_for(out / "checkpoints", proc, "training")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted (SIGTERM); the temporary files are removed and a new run resumes "
                      "from the last checkpoint"]
    assert json.loads(termination.read_text())["reason"] == "Terminated"
    assert json.loads((out / "progress.json").read_text())["stage"] == "interrupted"
    assert work_folders(tmp_path / "tmp") == []
    assert not (out / "result.json").exists()


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 1), (signal.SIGINT, 130)])
def test_signal_cleans_up_and_a_rerun_resumes(digits_workspace, tmp_path, signum, exit_code):
    out = tmp_path / "out"
    doc = digits_job_document(digits_workspace, out, distillation={"epochs": 12, "checkpointEverySteps": 5})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "distillery.cli", "run", str(job), "--no-progress"]
    tmp = tmp_path / "tmp"
    proc = start(cmd, tmp)
    try:
        wait_for(out / "checkpoints" / "latest.json", proc, "its first checkpoint")
        assert work_folders(tmp), "the run has a temp work folder while it trains"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == exit_code, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"interrupted ({name})" in errors[0], errors
    progress = json.loads((out / "progress.json").read_text())
    assert progress["stage"] == "interrupted" and 0 < progress["percent"] < 100
    assert work_folders(tmp) == [], "the temp work folder (downloads, staging) was left behind"
    assert not (out / "result.json").exists()
    stopped_at = json.loads((out / "checkpoints" / "latest.json").read_text())["state"]["global_step"]

    again = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)})
    assert again.returncode in (0, 3), again.stderr[-3000:]
    assert "resuming from step" in again.stderr
    result = json.loads(again.stdout)
    assert result["training"]["resumedFromStep"] >= stopped_at > 0
    assert json.loads((out / "progress.json").read_text())["stage"] == "done"
    assert work_folders(tmp) == []
