"""Bad text inputs fail fast with exit code 2 and one line that says what and where."""

from __future__ import annotations

import json

from distillery.api import load_job
from distillery.api.result import EXIT_INVALID
from distillery_trainer.entrypoint import run_job

from .conftest import read_jsonl, write_jsonl


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_malformed_jsonl_line_names_file_and_line(bbc_data, text_job, tmp_path, capsys):
    lines = bbc_data.train.read_text(encoding="utf-8").splitlines()[:10]
    lines[2] = '{"text": "a broken row", "label": '  # line 3
    bad = tmp_path / "broken-train.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    termination = tmp_path / "termination-log"

    job = load_job(text_job((tmp_path / "out").as_uri(), dataset={"trainUri": bad.as_uri()}))
    code, result = run_job(job, termination_path=str(termination))

    assert (code, result) == (EXIT_INVALID, None)
    errors = error_lines(capsys)
    assert len(errors) == 1, errors
    assert str(bad) in errors[0] and "line 3:" in errors[0]
    message = json.loads(termination.read_text())
    assert message["ok"] is False and message["reason"] == "InvalidInput"
    assert "line 3:" in message["message"]
    assert not (tmp_path / "out" / "result.json").exists()


def test_row_without_text_field_names_the_line(bbc_data, text_job, tmp_path, capsys):
    rows = read_jsonl(bbc_data.eval)[:5]
    rows[1] = {"body": rows[1]["text"], "label": rows[1]["label"]}  # line 2: wrong field name
    bad = write_jsonl(tmp_path / "eval.jsonl", rows)
    code, _ = run_job(load_job(text_job((tmp_path / "out").as_uri(), dataset={"evalUri": bad.as_uri()})))
    assert code == EXIT_INVALID
    errors = error_lines(capsys)
    assert len(errors) == 1 and str(bad) in errors[0] and "line 2:" in errors[0]
    assert "'text'" in errors[0]


def test_eval_label_unknown_to_the_teacher_names_the_row_not_the_value(bbc_data, text_job, tmp_path, capsys):
    rows = read_jsonl(bbc_data.eval)[:20]
    rows[4]["label"] = "hunter2-ALICE"  # not one of the teacher's id2label classes, and a secret
    bad = write_jsonl(tmp_path / "eval.jsonl", rows)
    termination = tmp_path / "termination-log"
    job = load_job(text_job((tmp_path / "out").as_uri(), dataset={"evalUri": bad.as_uri()}))
    code, result = run_job(job, termination_path=str(termination))
    assert (code, result) == (EXIT_INVALID, None)
    errors = error_lines(capsys)
    assert len(errors) == 1, errors
    line = errors[0]
    assert "row 5: label is not one of the teacher's 5 labels (field 'label')" in line
    assert "dataset.evalUri" in line and bad.as_uri() in line
    message = json.loads(termination.read_text())["message"]
    for text in (line.replace(bad.as_uri(), ""), message.replace(bad.as_uri(), "")):
        # neither the value nor the other classes (data too) are quoted
        assert "hunter2" not in text and "ALICE" not in text
        assert not any(name in text for name in bbc_data.classes)


def test_missing_train_file(text_job, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    code, _ = run_job(load_job(text_job((tmp_path / "out").as_uri(), dataset={"trainUri": missing.as_uri()})))
    assert code == EXIT_INVALID
    errors = error_lines(capsys)
    assert len(errors) == 1 and "dataset.trainUri" in errors[0] and "nope.jsonl" in errors[0]
