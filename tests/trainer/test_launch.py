"""The trainer pod's launcher: torchrun's command line, and exit codes that keep their meaning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from distillery_trainer.launch import pod_exit_code, torchrun_args, wanted
from tests.digits import digits_job_document

POD = {"DISTILLERY_NNODES": "2", "DISTILLERY_NPROC_PER_NODE": "1",
       "DISTILLERY_RDZV_ENDPOINT": "distill-a-g1-0.distill-a-workers:29400", "DISTILLERY_RDZV_ID": "uid-g1"}


def test_one_pod_runs_torchrun_standalone():
    args = torchrun_args({"DISTILLERY_NPROC_PER_NODE": "2"}, ["--spec", "job.yaml"])
    assert "--standalone" in args and "--nproc-per-node=2" in args
    assert args[-4:] == ["-m", "distillery_trainer.entrypoint", "--spec", "job.yaml"]


def test_several_pods_rendezvous_at_worker_zero_which_hosts_the_store():
    zero = torchrun_args({**POD, "JOB_COMPLETION_INDEX": "0"}, [])
    one = torchrun_args({**POD, "JOB_COMPLETION_INDEX": "1"}, [])
    for args in (zero, one):
        assert "--nnodes=2" in args and "--rdzv-backend=c10d" in args and "--standalone" not in args
        assert "--rdzv-endpoint=distill-a-g1-0.distill-a-workers:29400" in args and "--rdzv-id=uid-g1" in args
    assert "--rdzv-conf=is_host=1" in zero and "--rdzv-conf=is_host=1" not in one
    # The Job retries, not torchrun: an in-pod restart would repeat invalid input too.
    assert "--max-restarts=0" in zero and "--max-restarts=0" in one


def test_only_the_pods_first_process_launches():
    assert wanted({"DISTILLERY_NPROC_PER_NODE": "2"})
    assert not wanted({"DISTILLERY_NPROC_PER_NODE": "2", "TORCHELASTIC_RUN_ID": "x"})  # a rank itself
    assert not wanted({})


def test_invalid_input_in_any_process_is_invalid_input_for_the_pod(tmp_path):
    assert pod_exit_code(0, tmp_path) == 0
    assert pod_exit_code(1, tmp_path) == 1  # nothing recorded: torchrun's own failure
    (tmp_path / "rank-0").write_text("1")
    (tmp_path / "rank-1").write_text("2")
    assert pod_exit_code(1, tmp_path) == 2


def trainer(job_doc: dict, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILLERY_JOB": json.dumps(job_doc), "DISTILLERY_NPROC_PER_NODE": str(nproc),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distillery_trainer.entrypoint"], env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_pod_trains_with_two_processes_and_reports_once(digits_workspace, tmp_path):
    out = tmp_path / "out"
    done = trainer(digits_job_document(digits_workspace, out, distillation={"epochs": 1}), 2)
    assert done.returncode in (0, 3), done.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["training"]["worldSize"] == 2
    assert done.stdout.count("agreement w/ teacher") == 1  # one table: rank 0 speaks for the run
    assert "starting torchrun --nproc-per-node=2 --max-restarts=0 --standalone" in done.stderr


def test_bad_input_exits_2_through_torchrun(digits_workspace, tmp_path):
    doc = digits_job_document(digits_workspace, tmp_path / "out")
    doc["spec"]["teacher"]["uri"] = f"file://{tmp_path / 'no-such-teacher'}"
    done = trainer(doc, 2)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "no-such-teacher" in done.stderr
