"""Stable hashes of a job spec: which parts decide the trained student, and the whole of it."""

from __future__ import annotations

import hashlib
import json

from distillery.api.job import DistillationJobSpec

# Changing these changes what is trained; targets, benchmark and export only change the verdict.
TRAINING_FIELDS = ("teacher", "dataset", "student", "distillation")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def training_fingerprint(spec: DistillationJobSpec) -> str:
    return _digest(spec.model_dump(mode="json", by_alias=True, include=set(TRAINING_FIELDS)))


def spec_hash(spec: DistillationJobSpec) -> str:
    return _digest(spec.model_dump(mode="json", by_alias=True))
