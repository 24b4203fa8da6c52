"""Stable hashes of a job spec: which parts decide the trained student, and the whole of it.

Unset optional fields (None) are left out of both, so adding an optional field to the API does
not change the hash of any existing spec: a job in flight during an upgrade keeps its checkpoints,
and its result still matches its spec when the new operator checks it. A new field that must not
change old hashes therefore defaults to None.
"""

from __future__ import annotations

import hashlib
import json

from distillery.api.job import DistillationJobSpec

# Changing these changes what is trained; targets, benchmark and export only change the verdict.
TRAINING_FIELDS = ("teacher", "ensemble", "dataset", "student", "distillation")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def training_fingerprint(spec: DistillationJobSpec) -> str:
    return _digest(spec.model_dump(mode="json", by_alias=True, include=set(TRAINING_FIELDS), exclude_none=True))


def spec_hash(spec: DistillationJobSpec) -> str:
    return _digest(spec.model_dump(mode="json", by_alias=True, exclude_none=True))
