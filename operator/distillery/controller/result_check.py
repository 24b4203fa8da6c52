"""Believing a trainer's result.json only after checking it (pure; no I/O).

Whatever comes back from a job's store was writable by whoever can write that store, so the
operator checks the file against the job (spec hash, name), against what the trainer pod itself
reported in its termination message (which only the kubelet writes into the pod's status), refuses
non-finite numbers, and recomputes the verdict from the measured numbers with the job's targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from distillery import variants
from distillery.api.job import DistillationJob, ModelMetrics
from distillery.api.load import describe_validation_error
from distillery.api.result import TrainerResult, non_finite_paths
from distillery.fingerprint import spec_hash
from distillery.verdict import Verdict, measured

# The termination message rounds these as TrainerResult.termination_message does.
_REPORTED = (("accuracy", None), ("paretoScore", 4), ("speedup", 3))


@dataclass(frozen=True)
class Refused:
    """A result that is not believed: a final failure with this reason."""

    reason: str
    message: str


@dataclass(frozen=True)
class Checked:
    result: TrainerResult
    verdict: Verdict


# A recomputed score may differ from the trainer's rounded one in its last digits, never more.
RECOMPUTED_REL_TOL = 1e-3


def _same(a: float | None, b: float | None, digits: int | None) -> bool:
    """a (full precision) as the termination message rounds it to `digits` is b, give or take one
    unit in the last place (the value rounded may itself have been rounded before)."""
    if a is None or b is None:
        return False
    if digits is None:
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return abs(round(a, digits) - b) <= 1.5 * 10.0 ** -digits


def check_result(raw: Any, job: DistillationJob, reported: Mapping[str, Any] | None,
                 dominators: Callable[[ModelMetrics], list[str] | None] | None = None) -> Checked | Refused:
    """The result of `job` (the generation's job, as the trainer saw it) if it can be believed.

    `raw` is result.json as parsed, `reported` the trainer pod's termination message (None when
    no pod reported one), `dominators` gives the registered models that dominate a variant's
    metrics (for targets.mustImproveFrontier; None when the frontier is not consulted). Every
    variant is judged again and the student chosen again; the stored verdicts are not believed.
    """
    where = f"{job.spec.output.uri.rstrip('/')}/result.json"
    bad = non_finite_paths(raw)
    if bad:
        return Refused("NonFiniteResult", f"{where} has non-finite numbers in {', '.join(bad[:5])}")
    try:
        result = TrainerResult.model_validate(raw)
    except ValidationError as err:
        return Refused("ResultInvalid", f"{where} is not a trainer result: {describe_validation_error(err)}")
    if result.spec_hash != spec_hash(job.spec):
        return Refused("ResultMismatch", f"{where} belongs to another spec (was the output shared?)")
    if result.job != job.metadata.name:
        return Refused("ResultMismatch", f"{where} belongs to another job (field job)")
    for field, theirs, mine in (("teacherUri", result.teacher_uri, job.spec.teacher.uri),
                                ("task", result.task, job.spec.teacher.task),
                                ("hardware", result.hardware, job.spec.targets.hardware)):
        if theirs != mine:
            return Refused("ResultMismatch", f"{where}: {field} is not the job's")
    teacher = measured(result.teacher)
    student = measured(result.student)
    if teacher is None or student is None:
        missing = "teacher" if teacher is None else "student"
        return Refused("ResultInvalid", f"{where}: {missing}.accuracy and {missing}.latencyP50Ms are required")
    if not reported or reported.get("ok") is not True:
        return Refused("ResultMismatch", f"the trainer pod reported no result, so {where} cannot be checked")
    for field, digits in _REPORTED:
        mine = result.student.accuracy if field == "accuracy" else (
            result.pareto_score if field == "paretoScore" else result.speedup)
        theirs = reported.get(field)
        if not isinstance(theirs, int | float) or isinstance(theirs, bool) or not _same(mine, float(theirs), digits):
            return Refused("ResultMismatch", f"{where} disagrees with the trainer pod's termination message "
                                             f"on {field}")
    try:
        rejudged, judged = variants.rejudge(result, job.spec.targets, dominators)
    except ValueError as err:
        return Refused("ResultInvalid", f"{where}: {err}")
    stored_chosen = result.chosen_variant()
    for stored, fresh in zip(result.variants, judged.variants, strict=True):
        for field in ("speedup", "pareto_score"):
            mine, recomputed = getattr(stored, field), getattr(fresh, field)
            if (mine is None) != (recomputed is None) or (
                    recomputed is not None and not math.isclose(recomputed, mine, rel_tol=RECOMPUTED_REL_TOL,
                                                                abs_tol=1e-9)):
                return Refused("ResultMismatch", f"{where}: variant {fresh.name}'s {_camel(field)} does not follow "
                                                 "from the measured latencies and accuracies")
    for field, mine, theirs in (("speedup", result.speedup, stored_chosen.speedup),
                                ("paretoScore", result.pareto_score, stored_chosen.pareto_score)):
        if theirs is None or not math.isclose(theirs, mine, rel_tol=RECOMPUTED_REL_TOL, abs_tol=1e-9):
            return Refused("ResultMismatch", f"{where}: {field} is not the chosen variant's")
    return Checked(rejudged, judged.verdict)


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(w.title() for w in rest)
