"""`distillery run`, `validate` and `compare` as a user calls them: exit codes and messages."""

import json
import subprocess
import sys

import pytest

from tests.digits import digits_job_document

FAST = {"distillation": {"epochs": 2}}


def distillery(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "distillery.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_accepted_run_prints_the_table_and_exits_0(digits_workspace, tmp_path, write_job_file):
    doc = digits_job_document(digits_workspace, tmp_path / "out", targets={"maxAccuracyDrop": 0.5}, **FAST)
    r = distillery("run", str(write_job_file(doc)), "--no-progress")
    assert r.returncode == 0, r.stderr
    for text in ("teacher", "student", "latency p50", "parameters", "speedup", "accuracy retention",
                 "pareto score", "ACCEPTED"):
        assert text in r.stdout
    for stage in ("loading", "teacher-outputs", "selecting-layers", "training", "evaluating",
                  "exporting", "benchmarking"):
        assert f"[distillery] {stage}" in r.stderr


def test_rejected_run_exits_3_with_the_reasons(digits_workspace, tmp_path, write_job_file):
    doc = digits_job_document(digits_workspace, tmp_path / "out",
                              targets={"minAccuracy": 0.999, "maxLatencyMs": 0.000001}, **FAST)
    r = distillery("run", str(write_job_file(doc)), "--no-progress")
    assert r.returncode == 3, r.stderr
    assert "REJECTED" in r.stdout
    assert "below minAccuracy 0.999" in r.stdout and "exceeds maxLatencyMs" in r.stdout


@pytest.mark.parametrize(("change", "message"), [
    ({"student": {"method": "importance", "keepLayers": 9}}, "keepLayers: 9 is larger than the teacher's 6 layers"),
    ({"student": {"method": "sideways"}}, "spec.student.method: Input should be"),
    ({"distillation": {"temperature": 0}}, "spec.distillation.temperature: Input should be greater than 0"),
    ({"teacher": {"uri": "file:///nonexistent/teacher", "format": "torch", "task": "tabular-classification"}},
     "teacher.uri"),
    ({"dataset": {"format": "parquet"}}, "spec.dataset.format"),
])
def test_bad_input_is_one_clear_line_and_exit_2(digits_workspace, tmp_path, write_job_file, change, message):
    doc = digits_job_document(digits_workspace, tmp_path / "out", **change)
    r = distillery("run", str(write_job_file(doc)), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "result.json").exists()


def test_labels_out_of_range_name_the_row(digits_workspace, tmp_path, write_job_file):
    import numpy as np

    data = np.load(digits_workspace / "data" / "eval.npz")
    y = data["y"].copy()
    y[4] = 12
    np.savez(tmp_path / "bad.npz", x=data["x"], y=y)
    doc = digits_job_document(digits_workspace, tmp_path / "out", dataset={"evalUri": str(tmp_path / "bad.npz")})
    r = distillery("run", str(write_job_file(doc)), "--no-progress")
    assert r.returncode == 2
    assert "row 5: label is out of range 0..9 (field 'y')" in r.stderr
    # The value itself is never quoted (paths are left out: pytest's temp folders hold digits too).
    assert "12" not in r.stderr.replace(str(tmp_path), "").replace(str(digits_workspace), "")


def test_validate(digits_workspace, tmp_path, write_job_file):
    ok = distillery("validate", str(write_job_file(digits_job_document(digits_workspace, tmp_path / "o"))))
    assert ok.returncode == 0 and "valid DistillationJob" in ok.stdout
    bad = digits_job_document(digits_workspace, tmp_path / "o", student={"keepLayers": 2, "keepRatio": 0.5})
    r = distillery("validate", str(write_job_file(bad, "bad.yaml")))
    assert r.returncode == 2 and "keepLayers and student.keepRatio" in r.stderr


def test_compare_reports_parameters_compression_and_shared_layers(digits_workspace, tmp_path, write_job_file):
    a = digits_job_document(digits_workspace, tmp_path / "a", student={"method": "explicit", "layers": [0, 1, 4]},
                            distillation={"epochs": 0})
    b = digits_job_document(digits_workspace, tmp_path / "b", student={"method": "explicit", "layers": [0, 4]},
                            distillation={"epochs": 0})
    for i, doc in enumerate((a, b)):
        assert distillery("run", str(write_job_file(doc, f"{i}.yaml")), "--no-progress").returncode in (0, 3)
    r = distillery("compare", str(tmp_path / "a" / "model"), str(tmp_path / "b" / "model"), "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["sharedTeacherLayers"] == [0, 4]
    assert c["a"]["layers"] == 3 and c["b"]["layers"] == 2
    assert c["compressionRatio"] > 1
    t = distillery("compare", str(digits_workspace / "teacher"), str(tmp_path / "b" / "model"))
    assert t.returncode == 0 and "shared teacher layers: [0, 4]" in t.stdout


def test_a_dry_run_checks_the_spec_against_the_teacher_and_writes_nothing(digits_workspace, tmp_path,
                                                                         write_job_file):
    out = tmp_path / "out"
    doc = digits_job_document(digits_workspace, out, student={"method": "importance", "keepLayers": 6})
    r = distillery("run", str(write_job_file(doc)), "--dry-run", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "the spec fits the teacher (6 layers)" in r.stdout and "train rows" in r.stdout
    assert "[distillery] training" not in r.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing trained, nothing written

    # One layer more than the teacher has: refused as a run would refuse it, still writing nothing.
    doc["spec"]["student"]["keepLayers"] = 7
    r = distillery("run", str(write_job_file(doc)), "--dry-run", "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "student.keepLayers: 7 is larger than the teacher's 6 layers" in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_spec_dry_run_writes_its_verdict_as_the_termination_message(digits_workspace, tmp_path):
    """What the operator reads from the pod: ok, a dry run, and the summary."""
    from distillery.api import load_job
    from distillery_trainer.entrypoint import run_job

    doc = digits_job_document(digits_workspace, tmp_path / "out", dryRun=True)
    message = tmp_path / "termination-log"
    code, result = run_job(load_job(doc), termination_path=str(message), show_bar=False)
    assert (code, result) == (0, None)
    body = json.loads(message.read_text())
    assert body["ok"] is True and body["dryRun"] is True and body["reason"] == "Checked"
    assert "6 layers" in body["message"]
