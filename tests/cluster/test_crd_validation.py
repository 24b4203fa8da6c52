"""The CRDs in crds/ as the real API server applies them: OpenAPI defaults, schema and CEL
validation, short names and printer columns (kubectl)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest

from tests.cluster.conftest import Cluster

MINIMAL_JOB = {
    "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "x"},
    "spec": {"teacher": {"uri": "s3://b/t"}, "dataset": {"trainUri": "s3://b/a", "evalUri": "s3://b/b"},
             "output": {"uri": "s3://b/o"}},
}  # fmt: skip

STUDENT_MODEL = {
    "apiVersion": "distillery.io/v1alpha1", "kind": "StudentModel", "metadata": {"name": "x-gen1"},
    "spec": {"teacher": {"uri": "s3://b/t", "task": "sequence-classification"},
             "artifacts": {"uri": "s3://b/o/x/gen-1", "onnx": "s3://b/o/x/gen-1/model.onnx"},
             "metrics": {"accuracy": 0.91, "latencyP50Ms": 12.5}, "paretoScore": 2.7},
}  # fmt: skip


def apply(cluster: Cluster, namespace: str, doc: dict, check: bool = True):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=check)


def job_with(change: Callable[[dict], None]) -> dict:
    doc = copy.deepcopy(MINIMAL_JOB)
    change(doc["spec"])
    return doc


def test_minimal_job_is_created_with_server_side_defaults(control_plane: Cluster, namespace: str):
    apply(control_plane, namespace, MINIMAL_JOB)

    spec = json.loads(control_plane.kubectl("get", "distillationjob", "x", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["distillation"]["temperature"] == 2.0
    assert spec["distillation"]["alpha"] == 0.5
    assert spec["student"]["method"] == "importance"
    assert spec["teacher"]["format"] == "huggingface"
    assert spec["teacher"]["task"] == "sequence-classification"
    assert spec["targets"]["hardware"] == "cpu"
    assert spec["resources"]["gpus"] == 0
    assert spec["export"]["formats"] == ["onnx", "safetensors"]


@pytest.mark.parametrize(
    "change, expected",
    [
        pytest.param(lambda s: s["teacher"].pop("uri"), ["spec.teacher.uri", "Required value"], id="no-teacher-uri"),
        pytest.param(lambda s: s.update(student={"keepLayers": 0}), ["spec.student.keepLayers"], id="keepLayers-0"),
        pytest.param(lambda s: s.update(distillation={"temperature": 0}), ["spec.distillation.temperature"],
                     id="temperature-0"),
        pytest.param(lambda s: s.update(student={"method": "magic"}),
                     ["spec.student.method", 'Unsupported value: "magic"'], id="unknown-method"),
        pytest.param(lambda s: s.update(targets={"maxAccuracyDrop": 1.5}), ["spec.targets.maxAccuracyDrop"],
                     id="maxAccuracyDrop-1.5"),
        pytest.param(lambda s: s.update(student={"keepLayers": 3, "keepRatio": 0.5}),
                     ["spec.student", "set only one of student.keepLayers and student.keepRatio"],
                     id="keepLayers-and-keepRatio"),
        pytest.param(lambda s: s["teacher"].update(format="onnx"),
                     ["student.base or student.architecture is required when teacher.format is onnx"],
                     id="onnx-teacher-without-student-base"),
        pytest.param(lambda s: s.update(student={"method": "explicit"}),
                     ["spec.student", "student.method explicit needs student.layers"], id="explicit-without-layers"),
        pytest.param(lambda s: s["output"].update(cacheUri="/var/cache"),
                     ["spec.output", "output.cacheUri must be on the same kind of store as output.uri"],
                     id="cacheUri-on-another-store"),
        # Quantities and tolerations are refused at apply time, as pydantic refuses them
        # (tests/api/test_spec_validation.py), not when the trainer Job is created.
        pytest.param(lambda s: s.update(resources={"cpu": "lots"}), ["spec.resources.cpu", "should match"],
                     id="cpu-lots"),
        pytest.param(lambda s: s.update(resources={"memory": "8 GB"}), ["spec.resources.memory", "should match"],
                     id="memory-8-GB"),
        pytest.param(lambda s: s.update(resources={"cpu": 2}), ["spec.resources.cpu", "must be of type string"],
                     id="cpu-number"),
        pytest.param(lambda s: s.update(resources={"tolerations": [{"key": "a", "operator": "In"}]}),
                     ["spec.resources.tolerations[0].operator", 'Unsupported value: "In"'], id="toleration-operator"),
        pytest.param(lambda s: s.update(resources={"tolerations": [{"key": "a", "effect": "NoRun"}]}),
                     ["spec.resources.tolerations[0].effect", 'Unsupported value: "NoRun"'], id="toleration-effect"),
        pytest.param(lambda s: s.update(resources={"tolerations": [{"value": "x"}]}),
                     ["spec.resources.tolerations[0]", "a toleration without a key needs operator Exists"],
                     id="toleration-without-key"),
        pytest.param(lambda s: s.update(resources={"tolerations": [{"key": "a", "operator": "Exists", "value": "x"}]}),
                     ["spec.resources.tolerations[0]", "a toleration with operator Exists takes no value"],
                     id="toleration-exists-with-value"),
        pytest.param(lambda s: s.update(resources={"tolerations": [{"key": "a", "tolerationSeconds": 5}]}),
                     ["spec.resources.tolerations[0]", "tolerationSeconds needs effect NoExecute"],
                     id="tolerationSeconds-without-NoExecute"),
        pytest.param(lambda s: s.update(student={"base": {"uri": "s3://b/v1", "studentModel": "v1"}}),
                     ["spec.student.base", "student.base needs exactly one of uri and studentModel"],
                     id="base-uri-and-studentModel"),
        pytest.param(lambda s: s.update(student={"base": {"format": "huggingface"}}),
                     ["spec.student.base", "student.base needs exactly one of uri and studentModel"],
                     id="base-without-source"),
        pytest.param(lambda s: s.update(targets={"maxPerplexityIncrease": 0.3}),
                     ["targets.maxPerplexityIncrease needs teacher.task causal-lm"], id="perplexity-target-classifier"),
        pytest.param(lambda s: (s["teacher"].update(task="causal-lm"), s["dataset"].update(format="npz")),
                     ["teacher.task causal-lm needs a huggingface teacher and jsonl data"], id="causal-lm-npz"),
    ],
)
def test_invalid_job_is_refused_naming_the_field(control_plane: Cluster, namespace: str,
                                                 change: Callable[[dict], None], expected: list[str]):
    result = apply(control_plane, namespace, job_with(change), check=False)

    assert result.returncode != 0, result.stdout
    assert "is invalid" in result.stderr
    for text in expected:
        assert text in result.stderr
    assert "No resources found" in control_plane.kubectl("get", "dj", "-n", namespace).stderr


def test_causal_lm_job_with_its_targets_is_accepted(control_plane: Cluster, namespace: str):
    doc = job_with(lambda s: (s["teacher"].update(task="causal-lm"),
                              s.update(targets={"maxPerplexityIncrease": 0.3, "minSpeedup": 1.4},
                                       distillation={"teacherLogits": "online", "alpha": 1})))
    apply(control_plane, namespace, doc)
    spec = json.loads(control_plane.kubectl("get", "dj", "x", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["distillation"]["topK"] == 64 and spec["benchmark"]["decodeTokens"] == 32


def test_onnx_teacher_with_student_base_is_accepted(control_plane: Cluster, namespace: str):
    doc = job_with(lambda s: (s["teacher"].update(format="onnx"),
                              s.update(student={"base": {"uri": "s3://b/base"}, "keepLayers": 3})))
    apply(control_plane, namespace, doc)


def test_quantities_and_tolerations_a_pod_would_take_are_accepted(control_plane: Cluster, namespace: str):
    resources = {"cpu": "500m", "memory": "8Gi", "nodeSelector": {"pool": "gpu"},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                 {"key": "spot", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60},
                                 {"operator": "Exists"}]}  # the schema allows it; the operator's policy decides
    apply(control_plane, namespace, job_with(lambda s: s.update(resources=resources)))
    for cpu, memory in (("1.5", "512M"), ("2", "1e9")):
        doc = job_with(lambda s, cpu=cpu, memory=memory: s.update(resources={"cpu": cpu, "memory": memory}))
        doc["metadata"]["name"] = f"q-{cpu.replace('.', '-')}"
        apply(control_plane, namespace, doc)
    stored = json.loads(control_plane.kubectl("get", "dj", "x", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["resources"]["tolerations"] == resources["tolerations"]


def test_kubectl_get_dj_prints_the_printer_columns(control_plane: Cluster, namespace: str):
    apply(control_plane, namespace, MINIMAL_JOB)

    for name in ("dj", "distill", "distillationjobs"):
        header, row = control_plane.kubectl("get", name, "-n", namespace).stdout.splitlines()
        assert header.split() == ["NAME", "PHASE", "PROGRESS", "ACCURACY", "SPEEDUP", "PARETO", "ACCEPTED", "AGE"]
        assert row.split()[0] == "x"


def test_student_model_can_be_created_and_listed(control_plane: Cluster, namespace: str):
    apply(control_plane, namespace, STUDENT_MODEL)

    header, row = control_plane.kubectl("get", "sm", "-n", namespace).stdout.splitlines()
    assert header.split()[0] == "NAME"
    assert row.split()[0] == "x-gen1"
    assert "s3://b/t" in row
    stored = json.loads(control_plane.kubectl("get", "studentmodel", "x-gen1", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["hardware"] == "cpu"  # defaulted
