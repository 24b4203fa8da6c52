"""Whether an earlier run's result.json may stand for this run, and its verdict recomputed.

A stored result is reused only when it validates (every number finite), was produced from the
same spec (whole-spec hash and training fingerprint) and from the same content (digests of the
teacher's files and of the encoded train and eval data), and its decision is then recomputed
from its measured numbers with this spec's targets: a stored `accepted` is never believed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from distillery import variants
from distillery.api.job import Targets
from distillery.api.load import describe_validation_error
from distillery.api.result import InputDigests, TrainerResult


@dataclass(frozen=True)
class Rerun:
    """The stored result cannot stand for this run; why, in one line without data values."""

    reason: str


def rejudge(result: TrainerResult, targets: Targets) -> TrainerResult | Rerun:
    """The result with every variant's verdict, the choice and the scores recomputed."""
    try:
        return variants.rejudge(result, targets)[0]
    except ValueError:
        return Rerun("it lacks the measured accuracy or latency")


def check_previous(raw, *, spec_hash: str, fingerprint: str, digests: InputDigests,
                   targets: Targets) -> TrainerResult | Rerun:
    """`raw` is the stored result.json as parsed; returns the result to reuse, re-judged, or why not."""
    try:
        previous = TrainerResult.model_validate(raw)
    except ValidationError as err:
        return Rerun(f"it is not a valid result ({describe_validation_error(err)})")
    if previous.spec_hash != spec_hash or previous.fingerprint != fingerprint:
        return Rerun("it was written for another spec")
    if previous.inputs is None or previous.inputs != digests:
        return Rerun("it was computed from another teacher or other data (their contents changed)")
    return rejudge(previous, targets)
