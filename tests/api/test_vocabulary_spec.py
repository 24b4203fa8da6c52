"""student.vocabulary in the API: defaults, bad values named by their camelCase path, the CRD's
schema, and the report's own checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from distillery import crdgen
from distillery.api import SpecError, load_job
from distillery.api.result import VocabularyReport
from distillery.fingerprint import training_fingerprint
from tests.api.test_spec_validation import MINIMAL  # the smallest valid job


def with_vocabulary(vocabulary: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["student"] = {"vocabulary": vocabulary}
    return doc


def test_vocabulary_defaults_and_is_absent_by_default() -> None:
    assert load_job(copy.deepcopy(MINIMAL)).spec.student.vocabulary is None
    v = load_job(with_vocabulary({})).spec.student.vocabulary
    assert (v.prune, v.min_count, v.keep_tokens) == (True, 1, 0)
    v = load_job(with_vocabulary({"prune": False, "minCount": 3, "keepTokens": 5000})).spec.student.vocabulary
    assert (v.prune, v.min_count, v.keep_tokens) == (False, 3, 5000)
    assert load_job(with_vocabulary({"minCount": 2})).spec.student.to_wire()["vocabulary"] == \
        {"prune": True, "minCount": 2, "keepTokens": 0}


def test_vocabulary_takes_part_in_the_training_fingerprint() -> None:
    a = training_fingerprint(load_job(with_vocabulary({"minCount": 1})).spec)
    b = training_fingerprint(load_job(with_vocabulary({"minCount": 2})).spec)
    c = training_fingerprint(load_job(copy.deepcopy(MINIMAL)).spec)
    assert len({a, b, c}) == 3


@pytest.mark.parametrize(("vocabulary", "expected"), [
    ({"minCount": 0}, "spec.student.vocabulary.minCount: Input should be greater than or equal to 1"),
    ({"keepTokens": -1}, "spec.student.vocabulary.keepTokens: Input should be greater than or equal to 0"),
    ({"keepTokens": 1.5}, "spec.student.vocabulary.keepTokens"),
    ({"prune": "sometimes"}, "spec.student.vocabulary.prune"),
    ({"maxTokens": 10}, "spec.student.vocabulary.maxTokens: Extra inputs are not permitted"),
    ("yes", "spec.student.vocabulary"),
])  # fmt: skip
def test_bad_vocabulary_is_rejected_naming_the_field(vocabulary, expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_job(with_vocabulary(vocabulary))
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_crd_schema_has_the_vocabulary_fields_with_their_bounds() -> None:
    crd = crdgen.build_crds()["distillationjobs.distillery.io.yaml"]
    (version,) = crd["spec"]["versions"]
    student = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["student"]
    fields = student["properties"]["vocabulary"]["properties"]
    assert fields["prune"] == {**fields["prune"], "type": "boolean", "default": True}
    assert (fields["minCount"]["type"], fields["minCount"]["minimum"], fields["minCount"]["default"]) == \
        ("integer", 1, 1)
    assert (fields["keepTokens"]["minimum"], fields["keepTokens"]["default"]) == (0, 0)


def test_vocabulary_report_round_trips_and_refuses_impossible_counts() -> None:
    good = {"originalTokens": 30522, "keptTokens": 5000, "embeddingParametersRemoved": 25522 * 64,
            "embeddingShareRemoved": 0.836184, "trainTokens": 900, "trainTokensUnknown": 0,
            "evalTokens": 300, "evalTokensUnknown": 12, "evalUnknownShare": 0.04}
    # reports written before `segmentation` existed read as WordPiece's: the same split
    assert VocabularyReport.model_validate(good).to_wire() == {**good, "segmentation": "same"}
    for bad in ({"keptTokens": 40000}, {"evalTokensUnknown": 301}, {"trainTokensUnknown": 901},
                {"evalUnknownShare": 1.5}, {"keptTokens": 0}):
        with pytest.raises(ValueError):
            VocabularyReport.model_validate({**good, **bad})


def test_a_resplit_report_counts_unknowns_against_the_students_tokens() -> None:
    good = {"originalTokens": 8000, "keptTokens": 3813, "embeddingParametersRemoved": 4187 * 64,
            "embeddingShareRemoved": 0.523375, "segmentation": "resplit", "trainTokens": 900,
            "trainTokensUnknown": 0, "evalTokens": 300, "evalTokensUnknown": 310, "evalUnknownShare": 0.9,
            "trainTokensStudent": 900, "evalTokensStudent": 340}
    assert VocabularyReport.model_validate(good).to_wire() == good  # more unknowns than the teacher had tokens
    for bad in ({"evalTokensUnknown": 341}, {"segmentation": "same"}, {"evalTokensStudent": None},
                {"segmentation": "other"}):
        with pytest.raises(ValueError):
            VocabularyReport.model_validate({**good, **bad})
