"""Kill a real `distillery run` mid-training; running it again continues from the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.digits import digits_job_document


def test_killed_run_resumes_from_its_last_checkpoint(digits_workspace, tmp_path, write_job_file):
    out = tmp_path / "out"
    # Enough epochs that the run is still training when the first checkpoint appears.
    doc = digits_job_document(digits_workspace, out, distillation={"epochs": 60, "checkpointEverySteps": 5})
    job_file = write_job_file(doc)
    cmd = [sys.executable, "-m", "distillery.cli", "run", str(job_file), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 600
    try:
        while not latest.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(latest.read_text())["state"]["global_step"]
    assert killed_at > 0
    assert not (out / "result.json").exists(), "the run was killed before it finished"

    again = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=900)
    assert again.returncode in (0, 3), again.stderr
    assert "resuming from step" in again.stderr
    result = json.loads(again.stdout)
    assert result["training"]["resumedFromStep"] >= killed_at
    assert result["training"]["steps"] == 60 * 22  # all steps done once: none repeated, none lost
    assert result["student"]["accuracy"] > 0.85
    # Only the last complete checkpoint is kept.
    steps = {p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")}
    assert len(steps) == 1


def test_finished_job_is_not_run_twice_and_restart_runs_again(digits_job):
    from distillery_trainer.pipeline import run
    from distillery_trainer.progress import Progress

    job, out = digits_job(distillation={"epochs": 1})
    first = run(job, progress=Progress(show_bar=False))
    second = run(job, progress=Progress(show_bar=False))
    assert second.completion_time == first.completion_time  # the stored result, not a new run
    third = run(job, restart=True, progress=Progress(show_bar=False))
    assert third.training.resumed_from_step is None
    assert third.student.accuracy == first.student.accuracy  # seeded: same numbers again


def test_changed_spec_with_old_checkpoints_is_a_clear_error(digits_job):
    import pytest

    from distillery_trainer.errors import InputError
    from distillery_trainer.pipeline import run
    from distillery_trainer.progress import Progress

    job, out = digits_job(distillation={"epochs": 1})
    run(job, progress=Progress(show_bar=False))
    (out / "result.json").unlink()  # as if it had been interrupted after the last checkpoint
    changed, _ = digits_job(distillation={"epochs": 1, "temperature": 8.0})
    with pytest.raises(InputError, match="holds checkpoints of a different job spec"):
        run(changed, progress=Progress(show_bar=False))
