"""A search space as finite dimensions: its grid, its checks, and a trial's job spec built from a point.

Pure: no I/O. Dimensions use the snake-case field names of SearchSpace / TrialParams; messages
name fields in camelCase, as the user wrote them (`space.keepLayers.max`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from distillery.api.job import DistillationJobSpec, ExtractionMethod, Targets
from distillery.api.load import describe_validation_error
from distillery.api.search import (
    DistillationSearchSpec,
    IntRange,
    RatioRange,
    SearchAlgorithm,
    SearchSpace,
    TrialParams,
)

# Where each dimension lives in a DistillationJobSpec: (section, field); fixed order = grid order.
DIMENSION_TARGETS: dict[str, tuple[str, str]] = {
    "keep_layers": ("student", "keep_layers"),
    "keep_ratio": ("student", "keep_ratio"),
    "method": ("student", "method"),
    "importance_metric": ("student", "importance_metric"),
    "int8": ("export", "int8"),
    "temperature": ("distillation", "temperature"),
    "alpha": ("distillation", "alpha"),
    "learning_rate": ("distillation", "learning_rate"),
    "epochs": ("distillation", "epochs"),
}
# Dimensions whose values are ordered numbers (a sampler may treat them as a range).
NUMERIC_DIMENSIONS = frozenset({"keep_layers", "keep_ratio", "temperature", "alpha", "learning_rate", "epochs"})


def camel(name: str) -> str:
    return to_camel(name)


# A range with more values than this is a typo (no model has that many layers), not a space.
MAX_RANGE_VALUES = 1024


def range_count(value: IntRange | RatioRange) -> int:
    """How many values a range holds, without listing them."""
    if isinstance(value, IntRange):
        return (value.max - value.min) // value.step + 1
    return int((value.max - value.min) / value.step + 1e-9) + 1


def range_problems(space: SearchSpace) -> list[str]:
    return [f"space.{camel(name)}: {count} values from min to max by step; at most {MAX_RANGE_VALUES}"
            for name in ("keep_layers", "keep_ratio")
            if (value := getattr(space, name)) is not None and (count := range_count(value)) > MAX_RANGE_VALUES]


def dimensions(space: SearchSpace) -> dict[str, list]:
    """The dimensions the space sets, in grid order: snake field name -> its ordered values.
    Raises ValueError naming the field for a range too long to list (see check_space)."""
    problems = range_problems(space)
    if problems:
        raise ValueError(problems[0])
    dims: dict[str, list] = {}
    for name in DIMENSION_TARGETS:
        value = getattr(space, name)
        if value is None:
            continue
        dims[name] = value.values() if isinstance(value, IntRange | RatioRange) else list(value)
    return dims


def iter_grid(space: SearchSpace) -> Iterator[TrialParams]:
    """Every point of the space in a fixed order (the last dimension varies fastest), lazily: a
    large space is never listed whole."""
    dims = dimensions(space)
    if not dims:
        return
    names = list(dims)
    for combo in itertools.product(*dims.values()):
        yield TrialParams(**dict(zip(names, combo, strict=True)))


def grid_points(space: SearchSpace) -> list[TrialParams]:
    """The whole grid as a list (for small spaces; see iter_grid)."""
    return list(iter_grid(space))


def grid_size(space: SearchSpace) -> int:
    dims = dimensions(space)
    return math.prod(len(v) for v in dims.values()) if dims else 0


def resolve_algorithm(spec: DistillationSearchSpec) -> SearchAlgorithm:
    """auto becomes grid when the whole grid fits in the budget, else nsga2."""
    if spec.algorithm != SearchAlgorithm.AUTO:
        return spec.algorithm
    return SearchAlgorithm.GRID if grid_size(spec.space) <= spec.budget.max_trials else SearchAlgorithm.NSGA2


def point_key(params: TrialParams) -> tuple:
    """A hashable identity of a point: two params with the same key are the same trial settings."""
    return tuple((name, _plain(getattr(params, name))) for name in DIMENSION_TARGETS)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    return value.value if hasattr(value, "value") else value


def snap(name: str, value: Any, choices: list) -> Any:
    """The allowed value nearest to `value`: numbers by distance (ties: the smaller), other values
    by equality; None when nothing fits (a categorical value the space does not list)."""
    if value is None or not choices:
        return None
    if name in NUMERIC_DIMENSIONS:
        return min(choices, key=lambda c: (abs(float(c) - float(value)), float(c)))
    for choice in choices:
        if _plain(choice) == _plain(value):
            return choice
    return None


def template_value(template: DistillationJobSpec, name: str) -> Any:
    section, field = DIMENSION_TARGETS[name]
    return getattr(getattr(template, section), field)


def complete_point(spec: DistillationSearchSpec, params: TrialParams) -> TrialParams:
    """`params` restricted to the space's dimensions, each missing or unlisted value replaced by the
    template's value snapped to the space (else the dimension's first value): a point of the grid."""
    values = {}
    for name, choices in dimensions(spec.space).items():
        value = snap(name, getattr(params, name), choices)
        if value is None:
            value = snap(name, template_value(spec.template, name), choices)
        values[name] = choices[0] if value is None else value
    return TrialParams(**values)


def trial_targets(spec: DistillationSearchSpec) -> Targets:
    """The targets every trial is judged by: the search's, with the search's optimizeFor, so each
    trial chooses its variant the way the search ranks trials."""
    return spec.effective_targets().model_copy(update={"optimize_for": spec.effective_optimize_for()})


def trial_spec(template: DistillationJobSpec, params: TrialParams, *, output_uri: str, cache_uri: str,
               targets: Targets) -> DistillationJobSpec:
    """The template with one point applied, its own output, the shared cache and the search's
    targets. Raises ValueError naming the field when the result is not a valid job spec."""
    if params.method == ExtractionMethod.EXPLICIT:
        raise ValueError("space.method: explicit is not searchable (it needs a fixed student.layers)")
    wire = template.model_dump(by_alias=False, exclude_none=True, mode="python")
    for name, (section, field) in DIMENSION_TARGETS.items():
        value = getattr(params, name)
        if value is None:
            continue
        wire.setdefault(section, {})[field] = value
        # keepLayers and keepRatio exclude each other: the point's depth replaces the template's.
        if name == "keep_layers":
            wire["student"].pop("keep_ratio", None)
        elif name == "keep_ratio":
            wire["student"].pop("keep_layers", None)
    wire["targets"] = targets.model_dump(by_alias=False, exclude_none=True, mode="python")
    wire["output"] = {**wire.get("output", {}), "uri": output_uri, "cache_uri": cache_uri}
    try:
        return DistillationJobSpec.model_validate(wire)
    except ValidationError as err:
        raise ValueError(describe_validation_error(err)) from None


def check_space(spec: DistillationSearchSpec, teacher_layers: int | None) -> list[str]:
    """Everything wrong with the space for this template and teacher, one message per problem,
    each naming the field; empty when every point can become a valid trial."""
    space, template = spec.space, spec.template
    too_long = range_problems(space)
    if too_long:
        return too_long
    dims = dimensions(space)
    if not dims:
        return ["space sets no dimension (set at least one of keepLayers, keepRatio, method, "
                "importanceMetric, int8, temperature, alpha, learningRate, epochs)"]
    problems: list[str] = []
    if template.dry_run:
        problems.append("template.dryRun: a search's trials must train; remove it from the template")
    methods = dims.get("method", [template.student.method])
    if ExtractionMethod.EXPLICIT in methods:
        where = "space.method" if "method" in dims else "template.student.method"
        problems.append(f"{where}: explicit is not searchable (it keeps a fixed student.layers)")
    if "importance_metric" in dims and ExtractionMethod.IMPORTANCE not in methods:
        problems.append("space.importanceMetric: no trial uses student.method importance, so the metric "
                        "would change nothing")
    if teacher_layers is not None:
        if space.keep_layers is not None and space.keep_layers.max > teacher_layers:
            problems.append(f"space.keepLayers.max {space.keep_layers.max} exceeds the teacher's "
                            f"{teacher_layers} layers")
        if space.keep_ratio is not None:
            depths = {max(1, round(r * teacher_layers)) for r in space.keep_ratio.values()}
            if len(depths) < len(space.keep_ratio.values()):
                problems.append(f"space.keepRatio: its {len(space.keep_ratio.values())} ratios give only "
                                f"{len(depths)} distinct depths of the teacher's {teacher_layers} layers")
    problems.extend(_value_problems(spec, dims))
    return problems


def _value_problems(spec: DistillationSearchSpec, dims: dict[str, list]) -> list[str]:
    """Each value of each dimension applied alone to the template must give a valid job spec."""
    problems = []
    targets = trial_targets(spec)
    output = spec.template.output
    for name, values in dims.items():
        if name == "method" and ExtractionMethod.EXPLICIT in values:
            continue  # already reported
        for value in values:
            try:
                trial_spec(spec.template, TrialParams(**{name: value}), output_uri=output.uri,
                           cache_uri=output.cache_uri or f"{output.uri}/cache", targets=targets)
            except ValueError as err:
                problems.append(f"space.{camel(name)}: {_plain(value)!r} gives an invalid trial ({err})")
                break
    return problems
