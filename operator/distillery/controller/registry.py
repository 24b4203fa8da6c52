"""Pure builders for the StudentModel registry and its Pareto frontier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from distillery.api.job import DistillationJob, ModelMetrics
from distillery.api.result import TrainerResult
from distillery.api.search import TrialParams
from distillery.controller import naming
from distillery.frontier import Point, dominators, point_from_metrics


def group_of(result_or_spec_teacher_uri: str, task: str, hardware: str) -> str:
    return naming.frontier_group(result_or_spec_teacher_uri, task, hardware)


def build_student_model(job: DistillationJob, uid: str, generation: int, result: TrainerResult) -> dict[str, Any]:
    """A StudentModel for an accepted student. No owner reference: it outlives its job."""
    name = naming.student_model_name(job.metadata.name, generation)
    # Teacher, task and hardware from the spec, not the result file (which the store's writers control).
    teacher, task, hardware = job.spec.teacher.uri, job.spec.teacher.task.value, job.spec.targets.hardware.value
    group = group_of(teacher, task, hardware)
    return {
        "apiVersion": job.api_version,
        "kind": "StudentModel",
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace,
            "labels": {naming.LABEL_GROUP_KEY: group, naming.LABEL_JOB: job.metadata.name,
                       naming.LABEL_MANAGED_BY: naming.MANAGER},
        },
        "spec": {
            "teacher": {"uri": teacher, "task": task, "format": job.spec.teacher.format.value},
            "hardware": hardware,
            "artifacts": result.artifacts.to_wire(),
            "sourceJob": {"name": job.metadata.name, "namespace": job.metadata.namespace,
                          "generation": generation, "uid": uid},
            "layersKept": result.layers_kept,
            "teacherLayers": result.teacher_layers,
            "metrics": result.student.to_wire(),
            "teacherMetrics": result.teacher.to_wire(),
            "paretoScore": result.pareto_score,
            "variant": result.variant,
            **({"artifact": chosen.artifact} if (chosen := result.chosen_variant()) and chosen.artifact else {}),
            "recipe": recipe_of(job, result).to_wire(),
            **({"lineage": lineage} if (lineage := lineage_of(job)) else {}),
        },
    }


def lineage_of(job: DistillationJob) -> dict[str, Any]:
    """Where the student came from besides the teacher, from the spec (not the result file)."""
    spec, lineage = job.spec, {}
    if spec.student.base is not None and spec.student.base.uri is not None:
        lineage["parent"] = spec.student.base.uri
    if spec.student.base is not None and spec.student.base.student_model is not None:
        lineage["parentStudentModel"] = spec.student.base.student_model
    if spec.ensemble is not None:
        lineage["ensembleTeachers"] = [member.uri for member in spec.ensemble.teachers]
    return lineage


def recipe_of(job: DistillationJob, result: TrainerResult) -> TrialParams:
    """The student choices that produced a result, in a search space's terms (depth as measured)."""
    student, d = job.spec.student, job.spec.distillation
    depth, of = len(result.layers_kept), result.teacher_layers
    return TrialParams(keep_layers=depth or None, keep_ratio=round(depth / of, 6) if depth and of else None,
                       method=student.method,
                       importance_metric=student.importance_metric, int8=job.spec.export.int8,
                       temperature=d.temperature, alpha=d.alpha, learning_rate=d.learning_rate, epochs=d.epochs)


def point_of(name: str, metrics: Mapping) -> Point:
    return point_from_metrics(name, metrics)


def frontier_statuses(models: list[dict]) -> dict[str, dict[str, Any]]:
    """For each StudentModel (as stored), the status it should have: on the frontier or not,
    and who dominates it. Only models of one group are passed in."""
    points = [point_of(m["metadata"]["name"], m["spec"].get("metrics", {})) for m in models]
    out = {}
    for m, p in zip(models, points, strict=True):
        dom = dominators(p, points)
        out[m["metadata"]["name"]] = {
            "onFrontier": not dom,
            "dominatedBy": dom,
            "group": m["metadata"].get("labels", {}).get(naming.LABEL_GROUP_KEY),
            "observedGeneration": m["metadata"].get("generation"),
        }
    return out


def candidate_dominators(metrics: ModelMetrics, models: list[dict]) -> list[str]:
    """Registered models that dominate a new student's metrics (for targets.mustImproveFrontier)."""
    candidate = point_of("<candidate>", metrics.to_wire())
    others = [point_of(m["metadata"]["name"], m["spec"].get("metrics", {})) for m in models]
    return dominators(candidate, others)


FRONTIER_KEYS = ("onFrontier", "dominatedBy", "group", "observedGeneration")


def indexed(model: Mapping) -> dict[str, Any]:
    """What the frontier needs of a StudentModel, in the same shape as the object: the operator's
    index keeps this much per model rather than whole objects (their artifacts, layers, ...)."""
    meta, status = model["metadata"], model.get("status") or {}
    return {
        "metadata": {"name": meta["name"], "uid": meta.get("uid"), "generation": meta.get("generation"),
                     "labels": {naming.LABEL_GROUP_KEY: (meta.get("labels") or {}).get(naming.LABEL_GROUP_KEY)},
                     "deletionTimestamp": meta.get("deletionTimestamp")},
        # recipe and paretoScore: a search tries the registered students' settings first.
        "spec": {k: v for k, v in (model.get("spec") or {}).items() if k in ("metrics", "recipe", "paretoScore")},
        "status": {k: status[k] for k in FRONTIER_KEYS if k in status},
    }


def live(models: Iterable[Mapping], gone: set[str] | frozenset[str] = frozenset()) -> list[Mapping]:
    """The models that still count: not being deleted, and not known to be gone (uids a LIST no
    longer returned although the index still holds them: a DELETED event lost by the watch)."""
    return [m for m in models
            if not m["metadata"].get("deletionTimestamp") and m["metadata"].get("uid") not in gone]


def changes_frontier(event_type: str | None, model: Mapping) -> bool:
    """Whether a StudentModel event may change its group's frontier: an arrival (or the operator's
    start), a departure, or a spec edit not yet reflected; not the operator's own status writes."""
    if event_type != "MODIFIED":
        return True
    meta, status = model["metadata"], model.get("status") or {}
    return (bool(meta.get("deletionTimestamp")) or "onFrontier" not in status
            or status.get("observedGeneration") != meta.get("generation"))
