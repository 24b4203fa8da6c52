"""The spec hashes: what changes them and what must not."""

from __future__ import annotations

from distillery.api.job import DistillationJobSpec
from distillery.fingerprint import spec_hash, training_fingerprint

SPEC = {
    "teacher": {"uri": "file:///t", "format": "torch", "task": "tabular-classification"},
    "dataset": {"format": "npz", "trainUri": "file:///train.npz", "evalUri": "file:///eval.npz"},
    "student": {"keepLayers": 2},
    "output": {"uri": "file:///out"},
}


def spec(**sections) -> DistillationJobSpec:
    doc = {key: dict(value) for key, value in SPEC.items()}
    for section, values in sections.items():
        doc[section] = {**doc.get(section, {}), **values}
    return DistillationJobSpec.model_validate(doc)


def test_the_hashes_of_a_spec_stay_what_they_were():
    # Pinned: a new API field that defaults to anything but None changes every existing job's hashes
    # (checkpoints refused, results of in-flight jobs refused by the upgraded operator). If this
    # fails, give the new field a None default, or say in the release notes that jobs re-run.
    plain = spec()
    assert spec_hash(plain) == "3f3b1b505b5f0978"
    assert training_fingerprint(plain) == "fcad940759c27eaf"


def test_unset_optional_fields_are_left_out():
    plain = spec()
    assert plain.targets.max_size_bytes is None and plain.student.layers is None
    same = spec(targets={"maxSizeBytes": None}, student={"layers": None})
    assert spec_hash(same) == spec_hash(plain)


def test_training_fields_change_the_fingerprint_and_verdict_fields_only_the_spec_hash():
    base = spec()
    deeper = spec(student={"keepLayers": 3})
    stricter = spec(targets={"maxSizeBytes": 1000})
    assert training_fingerprint(deeper) != training_fingerprint(base)
    assert spec_hash(deeper) != spec_hash(base)
    assert training_fingerprint(stricter) == training_fingerprint(base)
    assert spec_hash(stricter) != spec_hash(base)
