"""student.width in the API: defaults, bad values named by their camelCase path, the CRD's schema,
and the report's own checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from distillery import crdgen
from distillery.api import SpecError, load_job
from distillery.api.width import WidthReport
from distillery.fingerprint import training_fingerprint
from tests.api.test_spec_validation import MINIMAL  # the smallest valid job


def with_width(width: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["student"] = {"width": width}
    return doc


def test_width_parses_with_defaults_and_is_absent_by_default() -> None:
    assert load_job(copy.deepcopy(MINIMAL)).spec.student.width is None
    width = load_job(with_width({"heads": 0.5, "calibrationBatches": 4})).spec.student.width
    assert (width.heads, width.ffn, width.calibration_batches) == (0.5, None, 4)
    assert load_job(with_width({"ffn": 1})).spec.student.width.ffn == 1.0
    assert load_job(with_width({"maxParameters": 5_000_000})).spec.student.width.max_parameters == 5_000_000


def test_width_takes_part_in_the_training_fingerprint() -> None:
    a = training_fingerprint(load_job(with_width({"heads": 0.5})).spec)
    b = training_fingerprint(load_job(with_width({"heads": 0.75})).spec)
    assert a != b


@pytest.mark.parametrize(("width", "expected"), [
    ({"heads": 0}, "spec.student.width.heads: Input should be greater than 0"),
    ({"heads": -0.5}, "spec.student.width.heads"),
    ({"ffn": 1.5}, "spec.student.width.ffn: Input should be less than or equal to 1"),
    ({}, "spec.student.width: student.width needs heads, ffn or maxParameters"),
    ({"heads": 0.5, "maxParameters": 1000}, "set student.width.maxParameters or heads/ffn, not both"),
    ({"maxParameters": 0}, "spec.student.width.maxParameters"),
    ({"maxParameters": 3.0}, "spec.student.width.maxParameters: Input should be a valid integer"),
    ({"heads": 0.5, "calibrationBatches": 0}, "spec.student.width.calibrationBatches"),
    ({"heads": 0.5, "neurons": 0.5}, "spec.student.width.neurons: Extra inputs are not permitted"),
    ({"heads": "half"}, "spec.student.width.heads"),
])  # fmt: skip
def test_bad_width_is_rejected_naming_the_field(width, expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_job(with_width(width))
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_crd_schema_bounds_the_ratios_and_needs_one_of_them() -> None:
    crd = crdgen.build_crds()["distillationjobs.distillery.io.yaml"]
    (version,) = crd["spec"]["versions"]
    width = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["student"]["properties"]["width"]
    for name in ("heads", "ffn"):
        field = width["properties"][name]
        assert field["type"] == "number" and field["maximum"] == 1
        assert field["minimum"] == 0 and field["exclusiveMinimum"] is True
    assert width["properties"]["calibrationBatches"]["minimum"] == 1
    rules = {r["message"]: r["rule"] for r in width["x-kubernetes-validations"]}
    assert rules["student.width needs heads, ffn or maxParameters"] == \
        "has(self.heads) || has(self.ffn) || has(self.maxParameters)"
    assert "set student.width.maxParameters or heads/ffn, not both" in rules
    assert width["properties"]["maxParameters"]["type"] == "integer"


def test_width_report_refuses_more_kept_than_there_were() -> None:
    good = {"heads": 4, "headsKept": 2, "ffn": 128, "ffnKept": 64, "calibrationRows": 10,
            "parametersBefore": 100, "parametersAfter": 80,
            "layers": [{"layer": 3, "headsKept": [0, 2], "headScores": [0.5, 0.1, 0.4, 0.2],
                        "ffnKept": 64, "ffnImportanceKept": 0.7}]}
    report = WidthReport.model_validate(good)
    assert report.to_wire() == good
    assert "heads 2/4, FFN neurons 64/128 per layer" in report.summary()
    assert "layer 3: heads [0, 2]" in report.card_text()
    with pytest.raises(ValueError, match="more heads or neurons kept"):
        WidthReport.model_validate({**good, "headsKept": 5})
    with pytest.raises(ValueError):
        WidthReport.model_validate({**good, "layers": [{"layer": 0, "ffnImportanceKept": 1.5}]})
