"""Pure builders for DistillationJob status: conditions, phases and the final verdict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from distillery.api.result import TrainerResult

SUCCEEDED, ACCEPTED, READY, STALLED = "Succeeded", "Accepted", "Ready", "Stalled"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool | None, reason: str, message: str, generation: int,
              previous: list[dict] | None, now: str | None = None) -> dict[str, Any]:
    """One condition; lastTransitionTime moves only when the status value changes."""
    value = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    moved = old is None or old.get("status") != value
    return {
        "type": type_, "status": value, "reason": reason, "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": (now or now_iso()) if moved else old.get("lastTransitionTime", now or now_iso()),
    }


def conditions(generation: int, previous: list[dict] | None, *, succeeded, accepted, ready, stalled) -> list[dict]:
    """Build all four from (status, reason, message) triples."""
    return [condition(t, *args, generation, previous) for t, args in (
        (SUCCEEDED, succeeded), (ACCEPTED, accepted), (READY, ready), (STALLED, stalled))]


def started(generation: int, trainer_job: str, previous: list[dict] | None, queued: bool) -> dict[str, Any]:
    reason = "Queued" if queued else "TrainerJobCreated"
    return {
        "observedGeneration": generation,
        "phase": "Pending",
        "trainerJob": trainer_job,
        "startTime": now_iso(),
        "completionTime": None,
        "progress": {"stage": "pending", "percent": 0.0},
        "accepted": None, "decision": None, "message": None,
        "conditions": conditions(
            generation, previous,
            succeeded=(None, reason, f"trainer Job {trainer_job} created"),
            accepted=(None, "Pending", "not measured yet"),
            ready=(False, "Pending", "no student yet"),
            stalled=(False, "Progressing", "")),
    }


def running(generation: int, progress: dict | None, previous: list[dict] | None) -> dict[str, Any]:
    stage = (progress or {}).get("stage", "running")
    return {
        "phase": "Running",
        "progress": progress or {"stage": "running", "percent": 0.0},
        "conditions": conditions(
            generation, previous,
            succeeded=(None, "Running", f"trainer is {stage}"),
            accepted=(None, "Pending", "not measured yet"),
            ready=(False, "Pending", "no student yet"),
            stalled=(False, "Progressing", "")),
    }


def failed(generation: int, reason: str, message: str, previous: list[dict] | None) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "phase": "Failed",
        "completionTime": now_iso(),
        "message": message[:2048],
        "accepted": False,
        "conditions": conditions(
            generation, previous,
            succeeded=(False, reason, message),
            accepted=(False, reason, "the trainer did not finish"),
            ready=(False, reason, "no student"),
            stalled=(True, reason, message)),
    }


def finished(generation: int, result: TrainerResult, accepted: bool, reasons: list[str],
             student_model: str | None, previous: list[dict] | None) -> dict[str, Any]:
    verdict = "Accepted" if accepted else "Rejected"
    summary = "; ".join(reasons)
    return {
        "observedGeneration": generation,
        "phase": "Succeeded",
        "completionTime": now_iso(),
        "progress": {"stage": "done", "percent": 100.0},
        "teacher": result.teacher.to_wire(),
        "student": result.student.to_wire(),
        "layersKept": result.layers_kept,
        "layerScores": result.layer_scores,
        "speedup": result.speedup,
        "accuracyRetention": result.accuracy_retention,
        "compressionRatio": result.compression_ratio,
        "paretoScore": result.pareto_score,
        "accepted": accepted,
        "decision": {"accepted": accepted, "reasons": reasons},
        "artifacts": result.artifacts.to_wire(),
        "studentModel": student_model,
        "message": f"{verdict}: {summary}",
        "conditions": conditions(
            generation, previous,
            succeeded=(True, "Completed", "the trainer finished and measured the student"),
            accepted=(accepted, verdict, summary),
            ready=(bool(accepted and student_model), "Registered" if student_model else verdict,
                   f"StudentModel {student_model}" if student_model else "no StudentModel registered"),
            stalled=(False, "Completed", "")),
    }
