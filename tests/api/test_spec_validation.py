"""Pydantic-side validation of DistillationJob documents (what `distillery run` and the operator
check before anything starts): defaults fill in, bad input fails with the field's name."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distillery.api import API_VERSION, DistillationJob, SpecError, load_job, load_job_file
from distillery.api.job import ExtractionMethod, TeacherFormat

MINIMAL: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "DistillationJob",
    "metadata": {"name": "minilm-news"},
    "spec": {
        "teacher": {"uri": "file:///models/minilm"},
        "dataset": {"trainUri": "file:///data/train.jsonl", "evalUri": "file:///data/eval.jsonl"},
        "output": {"uri": "s3://artifacts/minilm-news"},
    },
}

MINIMAL_YAML = f"""\
apiVersion: {API_VERSION}
kind: DistillationJob
metadata:
  name: minilm-news
spec:
  teacher:
    uri: file:///models/minilm
  dataset:
    trainUri: file:///data/train.jsonl
    evalUri: file:///data/eval.jsonl
  output:
    uri: s3://artifacts/minilm-news
"""


def _doc(mutate: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    if mutate is not None:
        mutate(doc)
    return doc


def test_minimal_job_loads_with_defaults() -> None:
    job = load_job(_doc())
    assert isinstance(job, DistillationJob)
    assert job.metadata.name == "minilm-news"
    spec = job.spec
    assert spec.teacher.format == TeacherFormat.HUGGINGFACE
    assert spec.student.method == ExtractionMethod.IMPORTANCE
    assert spec.student.keep_layers is None and spec.student.keep_ratio is None
    assert spec.distillation.temperature == 2.0
    assert spec.distillation.alpha == 0.5
    assert spec.dataset.max_sequence_length == 128
    assert spec.targets.hardware == "cpu"
    assert [f.value for f in spec.export.formats] == ["onnx", "safetensors"]
    assert spec.resources.gpus == 0
    assert job.status is None


def test_wire_form_round_trips() -> None:
    job = load_job(_doc(lambda d: d["spec"].update(student={"keepLayers": 3})))
    wire = job.to_wire()
    assert wire["spec"]["student"]["keepLayers"] == 3
    assert "keepRatio" not in wire["spec"]["student"]
    assert load_job(wire) == job


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[leaf]

    return mutate


# (id, mutation, text the error must contain: the field, then what is wrong)
INVALID = [
    ("missing-teacher-uri", _drop("spec.teacher.uri"), ["spec.teacher.uri", "required"]),
    ("keep-layers-zero", _set("spec.student.keepLayers", 0), ["spec.student.keepLayers"]),
    ("temperature-zero", _set("spec.distillation.temperature", 0), ["spec.distillation.temperature", "greater than 0"]),
    ("temperature-negative", _set("spec.distillation.temperature", -1.5), ["spec.distillation.temperature"]),
    ("unknown-method", _set("spec.student.method", "random"), ["spec.student.method", "importance"]),
    ("accuracy-drop-above-1", _set("spec.targets.maxAccuracyDrop", 1.5), ["spec.targets.maxAccuracyDrop"]),
    ("accuracy-drop-negative", _set("spec.targets.maxAccuracyDrop", -0.01), ["spec.targets.maxAccuracyDrop"]),
    (
        "keep-layers-and-ratio",
        _set("spec.student", {"keepLayers": 3, "keepRatio": 0.5}),
        ["spec.student", "keepLayers", "keepRatio"],
    ),
    (
        "explicit-without-layers",
        _set("spec.student", {"method": "explicit"}),
        ["spec.student", "explicit", "student.layers"],
    ),
    (
        "explicit-with-empty-layers",
        _set("spec.student", {"method": "explicit", "layers": []}),
        ["spec.student", "student.layers"],
    ),
    ("onnx-teacher-without-base", _set("spec.teacher.format", "onnx"), ["student.base", "student.architecture", "onnx"]),
    ("wrong-api-version", _set("apiVersion", "distillery.io/v1"), ["apiVersion", API_VERSION]),
    ("wrong-kind", _set("kind", "Distillation"), ["kind", "DistillationJob"]),
    ("unknown-spec-field", _set("spec.distilation", {"epochs": 1}), ["spec.distilation", "not permitted"]),
    ("unknown-nested-field", _set("spec.student.keep_layer", 2), ["spec.student.keep_layer"]),
    ("missing-output", _drop("spec.output"), ["spec.output", "required"]),
    ("duplicate-layers", _set("spec.student", {"method": "explicit", "layers": [0, 0]}), ["spec.student", "duplicates"]),
    ("cache-on-another-store", _set("spec.output", {"uri": "s3://b/o", "cacheUri": "/local/cache"}),
     ["spec.output", "cacheUri", "same kind of store"]),
    # Quantities are checked when the job is applied, not when the trainer Job is created.
    ("cpu-lots", _set("spec.resources.cpu", "lots"), ["spec.resources.cpu", "must be a Kubernetes quantity"]),
    ("memory-with-a-space", _set("spec.resources.memory", "8 GB"),
     ["spec.resources.memory", "must be a Kubernetes quantity"]),
    ("memory-lowercase-binary-suffix", _set("spec.resources.memory", "8gi"), ["spec.resources.memory"]),
    ("cpu-negative", _set("spec.resources.cpu", "-1"), ["spec.resources.cpu"]),
    ("cpu-number", _set("spec.resources.cpu", 2), ["spec.resources.cpu", "valid string"]),
    ("gpus-above-64", _set("spec.resources.gpus", 65), ["spec.resources.gpus"]),
    ("toleration-operator", _set("spec.resources.tolerations", [{"key": "a", "operator": "In"}]),
     ["spec.resources.tolerations[0].operator", "'Equal' or 'Exists'"]),
    ("toleration-effect", _set("spec.resources.tolerations", [{"key": "a", "effect": "NoRun"}]),
     ["spec.resources.tolerations[0].effect", "'NoSchedule', 'PreferNoSchedule' or 'NoExecute'"]),
    ("toleration-without-key-needs-exists", _set("spec.resources.tolerations", [{"value": "x"}]),
     ["spec.resources.tolerations[0]", "without a key needs operator Exists"]),
    ("toleration-exists-with-value", _set("spec.resources.tolerations", [{"key": "a", "operator": "Exists",
                                                                         "value": "x"}]),
     ["spec.resources.tolerations[0]", "Exists takes no value"]),
    ("toleration-seconds-without-noexecute", _set("spec.resources.tolerations", [{"key": "a", "tolerationSeconds": 5}]),
     ["spec.resources.tolerations[0]", "tolerationSeconds needs effect NoExecute"]),
    ("perplexity-target-on-a-classifier", _set("spec.targets.maxPerplexityIncrease", 0.3),
     ["maxPerplexityIncrease needs teacher.task causal-lm"]),
    ("causal-lm-on-arrays", lambda d: (_set("spec.teacher.task", "causal-lm")(d), _set("spec.dataset.format", "npz")(d)),
     ["causal-lm needs a huggingface teacher and jsonl data"]),
    ("causal-lm-onnx-teacher", lambda d: (_set("spec.teacher.task", "causal-lm")(d), _set("spec.teacher.format", "onnx")(d),
                                          _set("spec.student.base", {"uri": "file:///m"})(d)),
     ["causal-lm needs a huggingface teacher and jsonl data"]),
    ("teacher-logits-unknown", _set("spec.distillation.teacherLogits", "all"), ["spec.distillation.teacherLogits"]),
    ("top-k-zero", _set("spec.distillation.topK", 0), ["spec.distillation.topK"]),
]  # fmt: skip


def test_a_bad_quantity_is_named_not_quoted() -> None:
    with pytest.raises(SpecError) as exc:
        load_job(_doc(_set("spec.resources.memory", "hunter2-GB")))
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_job_is_rejected_naming_the_field(mutate, expected: list[str]) -> None:
    with pytest.raises(SpecError) as exc:
        load_job(_doc(mutate))
    message = str(exc.value)
    assert message.startswith("invalid DistillationJob: ")
    assert "\n" not in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


VALID = [
    ("keep-ratio", _set("spec.student", {"keepRatio": 0.5})),
    ("explicit-with-layers", _set("spec.student", {"method": "explicit", "layers": [0, 2, 4]})),
    ("onnx-with-base", lambda d: (_set("spec.teacher.format", "onnx")(d), _set("spec.student.base", {"uri": "file:///m"})(d))),
    ("onnx-with-architecture", lambda d: (_set("spec.teacher.format", "onnx")(d), _set("spec.student.architecture", {"name": "mlp"})(d))),
    ("accuracy-drop-bounds", _set("spec.targets", {"maxAccuracyDrop": 1, "minAccuracy": 0})),
    ("snake-case-names", _set("spec.student", {"keep_layers": 2})),
    ("extra-metadata", _set("metadata", {"name": "x", "uid": "123", "labels": {"a": "b"}})),
    ("cache-on-the-same-store", _set("spec.output", {"uri": "s3://b/o", "cacheUri": "s3://shared/cache"})),
    ("dropout-off-and-ablation", lambda d: (_set("spec.distillation.disableDropout", True)(d),
                                            _set("spec.student.importanceMetric", "ablation")(d))),
    ("quantities", _set("spec.resources", {"cpu": "500m", "memory": "8Gi"})),
    ("quantities-decimal-and-exponent", _set("spec.resources", {"cpu": "1.5", "memory": "1e9"})),
    ("quantities-plain-and-decimal-si", _set("spec.resources", {"cpu": "2", "memory": "512M"})),
    ("tolerations", _set("spec.resources.tolerations", [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "value": "batch"},
        {"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60},
        {"operator": "Exists"}])),  # the schema allows it; the chart's policy decides (controller/policy.py)
    ("causal-lm", lambda d: (_set("spec.teacher.task", "causal-lm")(d),
                             _set("spec.targets", {"maxPerplexityIncrease": 0.3, "minSpeedup": 1.4})(d),
                             _set("spec.distillation", {"teacherLogits": "online", "topK": 16, "alpha": 1})(d),
                             _set("spec.student", {"keepFirstAndLast": False, "importanceMetric": "angular-distance"})(d),
                             _set("spec.benchmark.decodeTokens", 16)(d))),
]  # fmt: skip


@pytest.mark.parametrize("mutate", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_variants_load(mutate) -> None:
    load_job(_doc(mutate))


@pytest.mark.parametrize("document", [None, [], "DistillationJob", 3])
def test_non_mapping_document_is_rejected(document) -> None:
    with pytest.raises(SpecError, match="mapping"):
        load_job(document)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- files


def test_load_job_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(MINIMAL_YAML)
    assert load_job_file(path) == load_job(_doc())


def test_load_job_file_picks_the_job_among_other_documents(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s3}\n---\n" + MINIMAL_YAML + "---\n")
    assert load_job_file(path).metadata.name == "minilm-news"


def test_load_job_file_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: distillery.io/v1alpha1\nspec:\n  teacher: {uri: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as exc:
        load_job_file(path)
    assert str(path) in str(exc.value)


def test_load_job_file_without_a_job(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(SpecError, match="exactly one DistillationJob") as exc:
        load_job_file(path)
    assert "found 0" in str(exc.value)


def test_load_job_file_with_two_jobs(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(MINIMAL_YAML + "---\n" + MINIMAL_YAML)
    with pytest.raises(SpecError, match="found 2"):
        load_job_file(path)


def test_load_job_file_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="found 0"):
        load_job_file(empty)
    with pytest.raises(SpecError, match="not found"):
        load_job_file(tmp_path / "nope.yaml")


def test_load_job_file_reports_field_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL_YAML + "  distillation:\n    temperature: 0\n")
    with pytest.raises(SpecError, match=r"spec\.distillation\.temperature"):
        load_job_file(path)
