"""Reading a table of trials: its Pareto frontier, its best trial, and seeds from registered students.

Pure: the operator and `distillery search` pass in what they read; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

from distillery.api.job import OptimizeFor
from distillery.api.search import Objective, SearchSpace, SearchTrial, TrialParams
from distillery.search.sampler import TrialRecord
from distillery.search.space import dimensions, point_key, snap
from distillery.variants import preference_key

# Trial phases that will not change any more (a rejected student is a Succeeded trial).
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def trial_name(search_name: str, index: int) -> str:
    """The trial's DistillationJob name: `<search>-t<index:03d>`."""
    return f"{search_name}-t{index:03d}"


def objective_values(trial: SearchTrial, objectives: list[Objective]) -> tuple[float, ...] | None:
    """The trial's raw values in objectives order (accuracy, latency ms, size bytes), None when any
    is missing (not measured yet, or failed)."""
    raw = {Objective.ACCURACY: trial.accuracy, Objective.LATENCY: trial.latency_ms, Objective.SIZE: trial.size_bytes}
    values = tuple(raw[Objective(o)] for o in objectives)
    return None if any(v is None for v in values) else tuple(float(v) for v in values)


def record_of(trial: SearchTrial, objectives: list[Objective]) -> TrialRecord:
    """What the sampler needs of a row: its point and, once finished, its measured values."""
    finished = trial.phase in FINISHED_PHASES
    values = objective_values(trial, objectives) if trial.phase == "Succeeded" else None
    return TrialRecord(params=trial.params, values=values, finished=finished)


def _oriented(values: tuple[float, ...], objectives: list[Objective]) -> tuple[float, ...]:
    """Values turned so that larger is better on every axis."""
    return tuple(v if Objective(o) == Objective.ACCURACY else -v for v, o in zip(values, objectives, strict=True))


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """a is at least as good as b everywhere and better somewhere (both oriented: larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def frontier_of(trials: list[SearchTrial], objectives: list[Objective]) -> list[str]:
    """Names of the measured trials that no other measured trial dominates, in table order
    (trials with equal values are all kept)."""
    measured = [(t.name, _oriented(v, objectives)) for t in trials
                if (v := objective_values(t, objectives)) is not None]
    return [name for name, values in measured if not any(dominates(other, values) for _, other in measured)]


def best_trial(trials: list[SearchTrial], optimize_for: OptimizeFor) -> SearchTrial | None:
    """The best accepted trial by the same preference a job uses to choose its variant; the
    earliest of equals. None when no trial met every target."""
    pool = [t for t in trials if t.accepted and t.accuracy is not None and t.latency_ms is not None]
    if not pool:
        return None

    def key(t: SearchTrial) -> tuple:
        return preference_key(optimize_for, accuracy=t.accuracy, latency_ms=t.latency_ms,
                              size_bytes=t.size_bytes or 0, pareto_score=t.pareto_score or 0.0)

    return max(pool, key=key)  # max keeps the first of equals


def seeds_from_students(students: list[dict[str, Any]], space: SearchSpace) -> list[tuple[str, TrialParams]]:
    """(StudentModel name, its recipe projected onto the space) for each registered student that
    has a recipe: frontier models first, then by paretoScore (highest first); a projection equal to
    an earlier one is dropped. Students are as stored (camelCase dicts)."""
    dims = dimensions(space)
    ranked = sorted(students, key=_seed_rank)
    seen: set = set()
    seeds = []
    for student in ranked:
        params = _projected(student, dims)
        if params is None:
            continue
        key = point_key(params)
        if key in seen:
            continue
        seen.add(key)
        seeds.append((str((student.get("metadata") or {}).get("name", "")), params))
    return seeds


def _seed_rank(student: dict[str, Any]) -> tuple:
    spec, status = student.get("spec") or {}, student.get("status") or {}
    score = spec.get("paretoScore")
    return (0 if status.get("onFrontier") else 1, -(score if isinstance(score, int | float) else float("-inf")))


def _projected(student: dict[str, Any], dims: dict[str, list]) -> TrialParams | None:
    """The student's recipe with each value snapped to the space and unset dimensions dropped; its
    depth from the layers it actually kept when the recipe does not state it in the space's terms."""
    spec = student.get("spec") or {}
    recipe = spec.get("recipe")
    if not isinstance(recipe, dict) or not dims:
        return None
    try:
        params = TrialParams.model_validate(recipe)
    except ValueError:
        return None  # a recipe written by another version: not a seed, not an error
    kept = spec.get("layersKept") or []
    teacher_layers = spec.get("teacherLayers")
    raw = {name: getattr(params, name) for name in dims}
    if "keep_layers" in dims and raw["keep_layers"] is None and kept:
        raw["keep_layers"] = len(kept)
    if "keep_ratio" in dims and raw["keep_ratio"] is None and kept and isinstance(teacher_layers, int) \
            and teacher_layers > 0:
        raw["keep_ratio"] = len(kept) / teacher_layers
    values = {name: snap(name, value, dims[name]) for name, value in raw.items()}
    values = {k: v for k, v in values.items() if v is not None}
    return TrialParams(**values) if values else None
