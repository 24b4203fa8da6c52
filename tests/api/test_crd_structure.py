"""The generated CRDs are structural, complete and carry the models' constraints."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from distillery import crdgen
from distillery.api import GROUP, VERSION
from distillery.api.base import QUANTITY_PATTERN
from distillery.api.job import ExtractionMethod, Phase, TeacherFormat

JOB = "distillationjobs.distillery.io.yaml"
STUDENT = "studentmodels.distillery.io.yaml"


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    return crdgen.build_crds()


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]


def _at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


# x-kubernetes-list-type: "set" makes the API server refuse duplicate items (student.layers).
ALLOWED_KEYS = set(crdgen._ORDER) | {"x-kubernetes-validations", "x-kubernetes-list-type"}


@pytest.mark.parametrize("name", [JOB, STUDENT])
def test_schema_is_structural(crds, name: str) -> None:
    for path, node in _walk(_root(crds[name])):
        where = path or "<root>"
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, where
        assert "$ref" not in node and "$defs" not in node, where
        for key in ("anyOf", "oneOf", "allOf", "not"):
            assert key not in node, f"{where}: {key}"
        assert "title" not in node, where
        assert "nullable" not in node, where
        assert set(node) <= ALLOWED_KEYS, f"{where}: {set(node) - ALLOWED_KEYS}"
        if "properties" in node:
            assert node["type"] == "object", where
            assert "additionalProperties" not in node, where
            assert set(node.get("required", [])) <= set(node["properties"]), where
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), where
        if node["type"] == "array":
            assert "items" in node, where
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:  # OpenAPI v3.0: a flag on minimum/maximum, not a number
                assert node[key] is True and key.replace("exclusiveM", "m") in node, where


@pytest.mark.parametrize("name", [JOB, STUDENT])
def test_root_holds_only_metadata_spec_status(crds, name: str) -> None:
    root = _root(crds[name])
    assert root["type"] == "object"
    assert list(root["properties"]) == ["metadata", "spec", "status"]
    assert root["properties"]["metadata"] == {"type": "object"}
    assert root["required"] == ["spec"]
    assert root["description"]


def test_crd_metadata_and_names(crds) -> None:
    job, student = crds[JOB], crds[STUDENT]
    for crd in (job, student):
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["kind"] == "CustomResourceDefinition"
        assert crd["spec"]["group"] == GROUP
        assert crd["spec"]["scope"] == "Namespaced"
        version = _version(crd)
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["categories"] == ["distillery"]
    assert job["metadata"]["name"] == "distillationjobs.distillery.io"
    assert job["spec"]["names"] == {
        "kind": "DistillationJob",
        "listKind": "DistillationJobList",
        "plural": "distillationjobs",
        "singular": "distillationjob",
        "shortNames": ["dj", "distill"],
        "categories": ["distillery"],
    }
    assert student["metadata"]["name"] == "studentmodels.distillery.io"
    assert student["spec"]["names"]["kind"] == "StudentModel"
    assert student["spec"]["names"]["plural"] == "studentmodels"
    assert student["spec"]["names"]["singular"] == "studentmodel"
    assert student["spec"]["names"]["shortNames"] == ["sm", "student"]


def test_build_crd_by_kind_name(crds) -> None:
    assert crdgen.build_crd("DistillationJob") == crds[JOB]
    assert crdgen.build_crd("StudentModel") == crds[STUDENT]
    with pytest.raises(KeyError):
        crdgen.build_crd("Nope")


def _columns(crd: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["name"]: (c["jsonPath"], c["type"]) for c in _version(crd)["additionalPrinterColumns"]}


def test_printer_columns(crds) -> None:
    assert _columns(crds[JOB]) == {
        "Phase": (".status.phase", "string"),
        "Progress": (".status.progress.percent", "number"),
        "Accuracy": (".status.student.accuracy", "number"),
        "Speedup": (".status.speedup", "number"),
        "Pareto": (".status.paretoScore", "number"),
        "Accepted": (".status.accepted", "boolean"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    assert _columns(crds[STUDENT]) == {
        "Teacher": (".spec.teacher.uri", "string"),
        "Task": (".spec.teacher.task", "string"),
        "Accuracy": (".spec.metrics.accuracy", "number"),
        "Latency": (".spec.metrics.latencyP50Ms", "number"),
        "Pareto": (".spec.paretoScore", "number"),
        "Frontier": (".status.onFrontier", "boolean"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    latency = next(
        c for c in _version(crds[STUDENT])["additionalPrinterColumns"] if c["name"] == "Latency"
    )
    assert latency["description"] == "p50 ms"


@pytest.mark.parametrize("name", [JOB, STUDENT])
def test_printer_columns_point_at_schema_fields(crds, name: str) -> None:
    root = _root(crds[name])
    for path, _ in _columns(crds[name]).values():
        if path.startswith(".metadata."):
            continue
        node = _at(root, path.lstrip("."))
        assert node["type"] in {"string", "number", "integer", "boolean"}, path


def test_enums(crds) -> None:
    spec = _at(_root(crds[JOB]), "spec")
    method = _at(spec, "student.method")
    assert method["type"] == "string"
    assert method["enum"] == [m.value for m in ExtractionMethod]
    assert method["default"] == ExtractionMethod.IMPORTANCE.value
    assert _at(spec, "teacher.format")["enum"] == [f.value for f in TeacherFormat]
    assert _at(spec, "export.formats.[]")["enum"] == ["onnx", "safetensors"]
    assert _at(_root(crds[JOB]), "status.phase")["enum"] == [p.value for p in Phase]


def test_defaults(crds) -> None:
    spec = _at(_root(crds[JOB]), "spec")
    assert _at(spec, "distillation.temperature")["default"] == 2.0
    assert _at(spec, "distillation.alpha")["default"] == 0.5
    assert _at(spec, "distillation.hiddenLoss.type")["default"] == "none"
    assert _at(spec, "dataset.format")["default"] == "jsonl"
    assert _at(spec, "targets.mustImproveFrontier")["default"] is False
    assert _at(spec, "export.formats")["default"] == ["onnx", "safetensors"]
    # Objects built by default_factory default to {} so the API server fills their fields.
    for obj in ("student", "distillation", "distillation.hiddenLoss", "targets", "benchmark",
                "export", "resources"):  # fmt: skip
        assert _at(spec, obj)["default"] == {}, obj
    # Required objects and Optional[...] = None fields get no default.
    for field in ("teacher", "dataset", "output", "student.keepLayers", "student.base",
                  "queueName", "benchmark.threads"):  # fmt: skip
        assert "default" not in _at(spec, field), field
    assert _at(_root(crds[JOB]), "status.conditions")["default"] == []


def test_required_and_constraints(crds) -> None:
    spec = _at(_root(crds[JOB]), "spec")
    assert spec["required"] == ["teacher", "dataset", "output"]
    assert _at(spec, "teacher")["required"] == ["uri"]
    assert _at(spec, "teacher.uri")["minLength"] == 1
    temperature = _at(spec, "distillation.temperature")
    assert (temperature["minimum"], temperature["exclusiveMinimum"]) == (0, True)
    assert temperature["maximum"] == 100
    assert _at(spec, "student.keepLayers")["minimum"] == 1
    assert "exclusiveMinimum" not in _at(spec, "student.keepLayers")
    drop = _at(spec, "targets.maxAccuracyDrop")
    assert (drop["type"], drop["minimum"], drop["maximum"]) == ("number", 0, 1)
    assert _at(spec, "resources.nodeSelector") == {
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string"},
    }
    assert _at(spec, "resources.tolerations.[].tolerationSeconds")["type"] == "integer"


def test_resources_are_checked_as_kubernetes_checks_a_pod(crds) -> None:
    """cpu and memory carry the quantity grammar; tolerations the enums and rules of a pod's."""
    resources = _at(_root(crds[JOB]), "spec.resources")
    for name in ("cpu", "memory"):
        node = resources["properties"][name]
        assert node["type"] == "string" and node["pattern"] == QUANTITY_PATTERN
        for good in ("2", "500m", "1.5", "8Gi", "512M", "1e9", ".5"):
            assert re.fullmatch(node["pattern"], good), good
        for bad in ("lots", "8 GB", "8gi", "-1", "1.5.2", "", "1Gi ", "1E+3m"):
            assert not re.fullmatch(node["pattern"], bad), bad
    toleration = _at(resources, "tolerations.[]")
    assert _at(resources, "tolerations")["maxItems"] == 64
    assert toleration["properties"]["operator"]["enum"] == ["Equal", "Exists"]
    assert toleration["properties"]["effect"]["enum"] == ["NoSchedule", "PreferNoSchedule", "NoExecute"]
    messages = {r["message"] for r in toleration["x-kubernetes-validations"]}
    assert messages == {"a toleration without a key needs operator Exists",
                        "a toleration with operator Exists takes no value",
                        "tolerationSeconds needs effect NoExecute"}


def test_descriptions_are_kept(crds) -> None:
    spec = _at(_root(crds[JOB]), "spec")
    assert spec["description"]
    assert "s3://" in _at(spec, "teacher.uri")["description"]
    assert _at(spec, "student.keepLayers")["description"] == "number of layers to keep"
    assert "acceptance rule" in _at(spec, "targets")["description"]


def test_cel_rules(crds) -> None:
    student = _at(_root(crds[JOB]), "spec.student")
    rules = student["x-kubernetes-validations"]
    by_message = {r["message"]: r["rule"] for r in rules}
    assert "set only one of student.keepLayers and student.keepRatio" in by_message
    assert "student.method explicit needs student.layers" in by_message
    assert "has(self.keepLayers)" in by_message[
        "set only one of student.keepLayers and student.keepRatio"
    ]
    for rule in rules:
        assert rule["rule"] and rule["message"], rule
        assert "\n" not in rule["message"]


def _rule_fields(rule: str) -> set[str]:
    return set(re.findall(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)", rule))


@pytest.mark.parametrize("name", [JOB, STUDENT])
def test_cel_rules_reference_known_fields_and_bounded_lists(crds, name: str) -> None:
    """Every `self.x` a rule reads exists; a list a rule iterates over has maxItems."""
    for path, node in _walk(_root(crds[name])):
        for rule in node.get("x-kubernetes-validations", []):
            for field in _rule_fields(rule["rule"]):
                assert field in node.get("properties", {}), f"{path}: {rule['rule']} reads {field}"
                child = node["properties"][field]
                iterated = re.search(
                    rf"self\.{field}\.(all|exists|exists_one|map|filter)\(", rule["rule"]
                )
                if child["type"] == "array" and iterated:
                    assert "maxItems" in child, f"{path}.{field}: maxItems needed for {rule}"


@pytest.mark.parametrize("name", [JOB, STUDENT])
def test_cel_rules_hold_for_object_defaults(crds, name: str) -> None:
    """The API server checks an object's `default` against its CEL rules *as written*
    (nested defaults are not applied first), so a rule may only read, without has(), the
    fields that are required or present in that default."""
    for path, node in _walk(_root(crds[name])):
        if "default" not in node or "x-kubernetes-validations" not in node:
            continue
        present = set(node["default"]) | set(node.get("required", []))
        for rule in node["x-kubernetes-validations"]:
            for field in _rule_fields(rule["rule"]) - present:
                assert f"has(self.{field})" in rule["rule"], (
                    f"{path}: rule {rule['rule']!r} reads self.{field} but the default "
                    f"{node['default']!r} lacks it; guard it with `!has(self.{field}) || ...`"
                )
