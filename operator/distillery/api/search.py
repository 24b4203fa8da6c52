"""The DistillationSearch resource: targets and a budget in, trials and a Pareto frontier out.

A search runs trials, each a DistillationJob built from `template` with one point of `space`
applied, and keeps in its status the table of trials, their frontier and the best trial.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from distillery.api.base import API_VERSION, ApiModel, Condition, cel, check_type_meta, crd_extra
from distillery.api.job import (
    DistillationJobSpec,
    ExtractionMethod,
    ImportanceMetric,
    ObjectMeta,
    OptimizeFor,
    Targets,
)


class Objective(StrEnum):
    """An axis of the trials' Pareto frontier."""

    ACCURACY = "accuracy"  # the chosen variant's accuracy, higher is better
    LATENCY = "latency"  # its p50 latency in ms, lower is better
    SIZE = "size"  # its file size in bytes, lower is better


class SearchAlgorithm(StrEnum):
    AUTO = "auto"  # grid when the whole grid fits in maxTrials, else nsga2
    GRID = "grid"  # every point of the space, in a fixed order, until the budget ends
    NSGA2 = "nsga2"  # Optuna's NSGAIISampler over the same (finite) space
    TPE = "tpe"  # Optuna's multi-objective TPESampler


class _OrderedRange(ApiModel):
    """min..max by step, refused (at apply time too) when min exceeds max."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(cel("self.min <= self.max", "min must not exceed max"))}

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class IntRange(_OrderedRange):
    """Integers min, min+step, ... up to max (inclusive)."""

    min: int = Field(ge=1, le=1024)
    max: int = Field(ge=1, le=1024, description="no model has more layers; a larger value is a typo")
    step: int = Field(default=1, ge=1)

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))


class RatioRange(_OrderedRange):
    """Ratios min, min+step, ... up to max (inclusive, to 1e-9), each in (0, 1]."""

    min: float = Field(gt=0, le=1)
    max: float = Field(gt=0, le=1)
    step: float = Field(gt=0, le=1)

    def values(self) -> list[float]:
        count = int((self.max - self.min) / self.step + 1e-9) + 1
        return [round(self.min + i * self.step, 6) for i in range(count)]


def _unique(values: list | None, field: str) -> list | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError(f"{field} lists a value twice")
    return values


class SearchSpace(ApiModel):
    """The student choices a search may vary; an unset dimension keeps the template's value.
    Every dimension is finite, so the same space can be walked as a grid or sampled."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(cel("!(has(self.keepLayers) && has(self.keepRatio))",
                                           "set keepLayers or keepRatio, not both"))}

    keep_layers: IntRange | None = Field(default=None, description="student depth in layers")
    keep_ratio: RatioRange | None = Field(default=None, description="student depth as a share of the teacher's")
    importance_metric: list[ImportanceMetric] | None = Field(default=None, min_length=1, max_length=8)
    method: list[ExtractionMethod] | None = Field(default=None, min_length=1, max_length=8)
    int8: list[bool] | None = Field(default=None, min_length=1, max_length=2,
                                    description="also export and judge an int8 variant")
    temperature: list[float] | None = Field(default=None, min_length=1, max_length=32)
    alpha: list[float] | None = Field(default=None, min_length=1, max_length=32)
    learning_rate: list[float] | None = Field(default=None, min_length=1, max_length=32)
    epochs: list[int] | None = Field(default=None, min_length=1, max_length=32)

    @field_validator("importance_metric", "method", "int8", "temperature", "alpha", "learning_rate", "epochs")
    @classmethod
    def _no_repeats(cls, values, info):
        return _unique(values, info.field_name)

    @field_validator("temperature", "learning_rate")
    @classmethod
    def _positive(cls, values, info):
        if values is not None and any(v <= 0 for v in values):
            raise ValueError(f"every {info.field_name} must be > 0")
        return values

    @field_validator("alpha")
    @classmethod
    def _share(cls, values):
        if values is not None and any(not 0 <= v <= 1 for v in values):
            raise ValueError("every alpha must lie in [0, 1]")
        return values

    @field_validator("epochs")
    @classmethod
    def _some_epochs(cls, values):
        if values is not None and any(v < 1 for v in values):
            raise ValueError("every epochs value must be >= 1")
        return values

    @model_validator(mode="after")
    def _one_depth(self) -> SearchSpace:
        if self.keep_layers is not None and self.keep_ratio is not None:
            raise ValueError("set keepLayers or keepRatio, not both")
        return self


class TrialParams(ApiModel):
    """One point of a search space: the values a trial sets in the template (None: the template's)."""

    keep_layers: int | None = None
    keep_ratio: float | None = None
    importance_metric: ImportanceMetric | None = None
    method: ExtractionMethod | None = None
    int8: bool | None = None
    temperature: float | None = None
    alpha: float | None = None
    learning_rate: float | None = None
    epochs: int | None = None


class SearchBudget(ApiModel):
    max_trials: int = Field(ge=1, le=1000, description="trials started in all (failed ones count)")
    parallel_trials: int = Field(default=1, ge=1, le=64, description="trials running at once")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="no trial starts after this many seconds from the search's start")


class DistillationSearchSpec(ApiModel):
    template: DistillationJobSpec = Field(description="the DistillationJob spec every trial starts from")
    space: SearchSpace
    targets: Targets | None = Field(default=None, description="the acceptance rule (default: the template's)")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective.ACCURACY, Objective.LATENCY], min_length=1, max_length=3,
        description="the axes of the trials' Pareto frontier")
    optimize_for: OptimizeFor | None = Field(
        default=None, description="how the best trial is chosen among those meeting every target "
        "(default: the targets' optimizeFor)")
    algorithm: SearchAlgorithm = SearchAlgorithm.AUTO
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="the sampler's seed: same seed, same trials")
    budget: SearchBudget
    learn_from_registry: bool = Field(
        default=True, description="try the settings of registered students of the same teacher, task and "
        "hardware first")
    stop: bool = Field(default=False, description="start no more trials; running ones finish")

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, values):
        return _unique(values, "objectives")

    def effective_targets(self) -> Targets:
        return self.targets if self.targets is not None else self.template.targets

    def effective_optimize_for(self) -> OptimizeFor:
        return self.optimize_for or self.effective_targets().optimize_for


# ----------------------------------------------------------------------------- status


class SearchTrial(ApiModel):
    """One trial as the search saw it last."""

    name: str = Field(description="the trial's DistillationJob")
    index: int = Field(ge=0)
    params: TrialParams
    phase: str | None = Field(default=None, description="the trial job's phase")
    seeded: bool = Field(default=False, description="its settings came from the registry, not the sampler")
    accuracy: float | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    pareto_score: float | None = None
    variant: str | None = None
    accepted: bool | None = None
    on_frontier: bool = False
    student_model: str | None = None
    message: str | None = None


class SearchProgress(ApiModel):
    percent: float = 0.0
    message: str | None = None


class SpaceCheck(ApiModel):
    """The dry run of the space's deepest student that runs before the first trial (in the cluster,
    where the operator never reads the teacher)."""

    job: str = Field(description="the DistillationJob (spec.dryRun) that checks the space")
    phase: str = Field(description="Running, Passed or Failed")
    message: str | None = None


class DistillationSearchStatus(ApiModel):
    observed_generation: int | None = None
    phase: str | None = Field(default=None, description="Pending, Running, Succeeded or Failed")
    conditions: list[Condition] = Field(default_factory=list)
    progress: SearchProgress | None = None
    algorithm: str | None = Field(default=None, description="the algorithm in use (auto resolved)")
    trials_started: int | None = None
    trials_running: int | None = None
    trials_succeeded: int | None = None
    trials_failed: int | None = None
    trials: list[SearchTrial] = Field(default_factory=list)
    frontier: list[str] = Field(default_factory=list, description="trials on the Pareto frontier of the objectives")
    best_trial: str | None = None
    student_model: str | None = Field(default=None, description="the best trial's StudentModel")
    seeded_from: list[str] = Field(default_factory=list, description="StudentModels whose settings were tried first")
    space_check: SpaceCheck | None = Field(default=None, description="the check of the space against the teacher "
                                           "before the first trial")
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None


class DistillationSearch(ApiModel):
    api_version: str = API_VERSION
    kind: str = "DistillationSearch"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: DistillationSearchSpec
    status: DistillationSearchStatus | None = None

    @model_validator(mode="after")
    def _kind(self) -> DistillationSearch:
        check_type_meta(self.api_version, self.kind, "DistillationSearch")
        return self
