"""Pure builders for DistillationJob status: conditions, phases and the final verdict.

Each builder returns a :class:`StatusPatch`: the typed status (``DistillationJobStatus``) plus
the fields a merge patch must clear (``to_wire()`` leaves unset fields out, and a left-out field
keeps its old value in a merge patch, inside an object such as ``progress`` too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic.alias_generators import to_camel

from distillery.api.base import Condition
from distillery.api.job import Decision, DistillationJobStatus, Phase, Progress
from distillery.api.result import TrainerResult

SUCCEEDED, ACCEPTED, READY, STALLED = "Succeeded", "Accepted", "Ready", "Stalled"


@dataclass(frozen=True)
class StatusPatch:
    """A status to merge into the object's, and the fields (snake_case) it removes."""

    status: DistillationJobStatus
    cleared: tuple[str, ...] = ()  # "progress.ranks": a field of an object the status sets

    def to_wire(self) -> dict[str, Any]:
        wire = self.status.to_wire()
        for path in self.cleared:
            *parents, leaf = [to_camel(name) for name in path.split(".")]
            node = wire
            for name in parents:
                node = node.setdefault(name, {})
            node.setdefault(leaf, None)
        return wire

    @property
    def phase(self) -> str | None:
        return self.status.phase.value if self.status.phase else None


def progress_cleared(progress: Progress) -> tuple[str, ...]:
    """The progress fields this one leaves unset: cleared, or an earlier progress's (the ranks of a
    distributed run that have since caught up, a read error's message) would stay in the status."""
    return tuple(f"progress.{name}" for name in Progress.model_fields if getattr(progress, name) is None)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool | None, reason: str, message: str, generation: int,
              previous: list[dict] | None, now: str | None = None) -> Condition:
    """One condition; lastTransitionTime moves only when the status value changes."""
    value = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    moved = old is None or old.get("status") != value
    stamp = (now or now_iso()) if moved else old.get("lastTransitionTime", now or now_iso())
    return Condition(type=type_, status=value, reason=reason, message=message[:1024],
                     observed_generation=generation, last_transition_time=stamp)


def conditions(generation: int, previous: list[dict] | None, *, succeeded, accepted, ready, stalled) -> list[Condition]:
    """Build all four from (status, reason, message) triples."""
    return [condition(t, *args, generation, previous) for t, args in (
        (SUCCEEDED, succeeded), (ACCEPTED, accepted), (READY, ready), (STALLED, stalled))]


# Started anew: what a previous generation's end left behind goes.
_RESULT_FIELDS = ("completion_time", "accepted", "decision", "message", "student_model", "teacher", "student",
                  "layers_kept", "layer_scores", "speedup", "accuracy_retention", "compression_ratio",
                  "pareto_score", "artifacts")


def started(generation: int, trainer_job: str, previous: list[dict] | None, queued: bool,
            world_size: int = 1) -> StatusPatch:
    reason = "Queued" if queued else "TrainerJobCreated"
    progress = Progress(stage="pending", percent=0.0)
    return StatusPatch(DistillationJobStatus(
        observed_generation=generation,
        phase=Phase.PENDING,
        trainer_job=trainer_job,
        world_size=world_size,
        start_time=now_iso(),
        progress=progress,
        conditions=conditions(
            generation, previous,
            succeeded=(None, reason, f"trainer Job {trainer_job} created"),
            accepted=(None, "Pending", "not measured yet"),
            ready=(False, "Pending", "no student yet"),
            stalled=(False, "Progressing", "")),
    ), cleared=_RESULT_FIELDS + progress_cleared(progress))


def waiting(generation: int, reason: str, message: str, previous: list[dict] | None) -> StatusPatch:
    """Not started, for a reason that may go away (a Secret not created yet): Pending, not Failed."""
    return StatusPatch(DistillationJobStatus(
        observed_generation=generation,
        phase=Phase.PENDING,
        message=message[:2048],
        conditions=conditions(
            generation, previous,
            succeeded=(None, reason, message),
            accepted=(None, "Pending", "not measured yet"),
            ready=(False, reason, "no student yet"),
            stalled=(False, reason, message)),
    ), cleared=tuple(f for f in _RESULT_FIELDS if f != "message") + ("trainer_job",))


def running(generation: int, progress: Progress | Mapping | None, previous: list[dict] | None) -> StatusPatch:
    if isinstance(progress, Mapping):
        progress = Progress.model_validate(progress)
    progress = progress or Progress(stage="running", percent=0.0)
    stage = progress.stage or "running"
    return StatusPatch(DistillationJobStatus(
        phase=Phase.RUNNING,
        progress=progress,
        conditions=conditions(
            generation, previous,
            succeeded=(None, "Running", f"trainer is {stage}"),
            accepted=(None, "Pending", "not measured yet"),
            ready=(False, "Pending", "no student yet"),
            stalled=(False, "Progressing", "")),
    ), cleared=progress_cleared(progress))


def failed(generation: int, reason: str, message: str, previous: list[dict] | None) -> StatusPatch:
    return StatusPatch(DistillationJobStatus(
        observed_generation=generation,
        phase=Phase.FAILED,
        completion_time=now_iso(),
        message=message[:2048],
        accepted=False,
        conditions=conditions(
            generation, previous,
            succeeded=(False, reason, message),
            accepted=(False, reason, "the trainer did not finish"),
            ready=(False, reason, "no student"),
            stalled=(True, reason, message)),
    ))


def checked(generation: int, message: str, previous: list[dict] | None) -> StatusPatch:
    """A dry run whose checks passed: done, and nothing to accept or register."""
    return StatusPatch(DistillationJobStatus(
        observed_generation=generation,
        phase=Phase.SUCCEEDED,
        completion_time=now_iso(),
        progress=Progress(stage="done", percent=100.0),
        message=message[:2048],
        conditions=conditions(
            generation, previous,
            succeeded=(True, "Checked", message),
            accepted=(None, "DryRun", "a dry run trains and measures nothing"),
            ready=(False, "DryRun", "no student: a dry run trains nothing"),
            stalled=(False, "Completed", "")),
    ))


def finished(generation: int, result: TrainerResult, accepted: bool, reasons: list[str],
             student_model: str | None, previous: list[dict] | None) -> StatusPatch:
    verdict = "Accepted" if accepted else "Rejected"
    summary = "; ".join(reasons)
    return StatusPatch(DistillationJobStatus(
        observed_generation=generation,
        phase=Phase.SUCCEEDED,
        completion_time=now_iso(),
        progress=Progress(stage="done", percent=100.0),
        teacher=result.teacher,
        student=result.student,
        layers_kept=result.layers_kept,
        layer_scores=result.layer_scores,
        speedup=result.speedup,
        accuracy_retention=result.accuracy_retention,
        compression_ratio=result.compression_ratio,
        pareto_score=result.pareto_score,
        accepted=accepted,
        decision=Decision(accepted=accepted, reasons=reasons),
        variant=result.variant,
        variants=result.variants,
        artifacts=result.artifacts,
        student_model=student_model,
        message=f"{verdict}: {summary}",
        conditions=conditions(
            generation, previous,
            succeeded=(True, "Completed", "the trainer finished and measured the student"),
            accepted=(accepted, verdict, summary),
            ready=(bool(accepted and student_model), "Registered" if student_model else verdict,
                   f"StudentModel {student_model}" if student_model else "no StudentModel registered"),
            stalled=(False, "Completed", "")),
    ), cleared=("progress.ranks",) + (() if student_model else ("student_model",)))
