"""What the trainer reports: result.json in the store and a compact termination message.

The operator reads these; keeping the model here (no torch) lets both sides share it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from distillery.api.base import ApiModel
from distillery.api.job import Artifacts, Decision, Hardware, ModelMetrics, Task, Variant
from distillery.api.width import WidthReport

# Exit codes of `distillery run` and the trainer entry point.
EXIT_ACCEPTED = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_REJECTED = 3

RESULT_KEY = "result.json"
METRICS_KEY = "metrics.json"
PROGRESS_KEY = "progress.json"


class TrainingSummary(ApiModel):
    epochs: int
    steps: int
    seconds: float
    device: str
    history: list[dict] = Field(default_factory=list)
    resumed_from_step: int | None = None
    world_size: int = Field(default=1, ge=1, description="processes that trained together (torchrun's WORLD_SIZE)")


class InputDigests(ApiModel):
    """sha256 of what the run consumed: the teacher's files and the encoded train and eval data
    (tokens or features, and labels). A stored result is reused only when these still match."""

    teacher: str = Field(min_length=16)
    train: str = Field(min_length=16)
    eval: str = Field(min_length=16)
    base: str | None = Field(default=None, description="student.base's files, when one is given")
    ensemble: list[str] | None = Field(default=None, description="ensemble.teachers' files, in order")
    previous: list[str] | None = Field(default=None, description="incremental: the old train and eval data")


class IncrementalReport(ApiModel):
    """An incremental run: what it continued, and how much of the old task it kept."""

    parent: str = Field(description="student.base: the student this run continued")
    previous_accuracy_before: float = Field(description="student.base on incremental.previousEvalUri")
    previous_accuracy_after: float = Field(description="the new student on incremental.previousEvalUri")
    forgetting: float = Field(description="before - after (negative: it improved on the old data)")
    previous_perplexity_before: float | None = Field(
        default=None, description="causal-lm: student.base's perplexity on incremental.previousEvalUri")
    previous_perplexity_after: float | None = Field(
        default=None, description="causal-lm: the new student's perplexity there")
    replayed_rows: int = Field(ge=0, description="old train rows added to the new train split")
    ewc_lambda: float | None = None
    fisher_rows: int | None = Field(default=None, description="old rows the EWC Fisher was estimated on")


class EnsembleMember(ApiModel):
    uri: str
    weight: float = Field(description="normalized share of the soft labels")
    accuracy: float = Field(description="this teacher alone, by the task's metric on the eval split")
    perplexity: float | None = Field(default=None, description="causal-lm: this teacher's eval perplexity")


class EnsembleReport(ApiModel):
    """The teachers of an ensemble and their mixture, each scored on the eval split."""

    members: list[EnsembleMember] = Field(min_length=2, description="`teacher` first, then ensemble.teachers")
    accuracy: float = Field(description="the mixture of their soft labels (what the student learned from)")
    metric_name: str | None = None
    perplexity: float | None = Field(
        default=None, description="causal-lm: the mixture's eval perplexity, from the teachers' full distributions")


class VocabularyReport(ApiModel):
    """What vocabulary pruning (student.vocabulary) kept, and what the splits lost to it. Token
    counts are text tokens of the encoded splits: padding and special tokens are not counted."""

    original_tokens: int = Field(ge=1, description="rows of the source model's word embeddings")
    kept_tokens: int = Field(ge=1)
    embedding_parameters_removed: int = Field(ge=0)
    embedding_share_removed: float = Field(ge=0, le=1, description="share of the word-embedding parameters removed")
    segmentation: Literal["same", "resplit"] = Field(
        default="same", description="same: the student's tokenizer splits text as the teacher's, removed tokens "
        "becoming [UNK] (WordPiece); resplit: removed tokens are spelled with kept pieces (BPE, Unigram)")
    train_tokens: int = Field(ge=0, description="in the teacher's tokenization")
    train_tokens_unknown: int = Field(
        ge=0, description="train tokens the student sees as unknown that the teacher did not (0 unless minCount > 1)")
    eval_tokens: int = Field(ge=0, description="in the teacher's tokenization")
    eval_tokens_unknown: int = Field(
        ge=0, description="eval tokens the student sees as unknown that the teacher's tokenizer knew")
    eval_unknown_share: float = Field(ge=0, le=1, description="of the student's eval tokens")
    train_tokens_student: int | None = Field(
        default=None, ge=0, description="resplit: train tokens in the student's tokenization")
    eval_tokens_student: int | None = Field(
        default=None, ge=0, description="resplit: eval tokens in the student's tokenization (more where removed "
        "tokens were spelled with several kept pieces)")

    @model_validator(mode="after")
    def _parts_within_wholes(self) -> VocabularyReport:
        # Read back from a store, a report must not claim more kept or lost than there was.
        train_whole = self.train_tokens if self.train_tokens_student is None else self.train_tokens_student
        eval_whole = self.eval_tokens if self.eval_tokens_student is None else self.eval_tokens_student
        if (self.kept_tokens > self.original_tokens or self.train_tokens_unknown > train_whole
                or self.eval_tokens_unknown > eval_whole):
            raise ValueError("vocabulary: more tokens kept or lost than there were")
        if (self.segmentation == "resplit") != (self.eval_tokens_student is not None):
            raise ValueError("vocabulary: the student's token counts go with segmentation resplit, and only with it")
        return self


def non_finite_paths(value: Any, where: str = "") -> list[str]:
    """Dotted paths of every NaN or infinite float in a dumped model or parsed JSON document."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where or "(top level)"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, f"{where}[{i}]")]
    return []


class TrainerResult(ApiModel):
    job: str
    task: Task
    hardware: Hardware
    fingerprint: str = Field(description="hash of the spec parts that shape the trained student")
    spec_hash: str = Field(description="hash of the whole spec")
    teacher_uri: str
    teacher: ModelMetrics
    student: ModelMetrics = Field(description="the chosen variant's metrics (see variant)")
    variant: str = Field(default="fp32", description="the variant chosen as the student")
    variants: list[Variant] = Field(min_length=1, description="every measured variant, each judged on its own")
    teacher_layers: int | None = None
    layers_kept: list[int] = Field(default_factory=list)
    layer_scores: list[float] = Field(default_factory=list)
    speedup: float
    accuracy_retention: float
    compression_ratio: float
    pareto_score: float
    decision: Decision
    artifacts: Artifacts
    training: TrainingSummary | None = None
    onnx_max_abs_diff: float | None = None
    inputs: InputDigests | None = Field(default=None, description="digests of the teacher and the data used")
    ensemble: EnsembleReport | None = Field(default=None, description="the ensemble's teachers, when there is one")
    incremental: IncrementalReport | None = Field(default=None, description="an incremental run's forgetting")
    vocabulary: VocabularyReport | None = Field(default=None, description="vocabulary pruning, when asked for")
    width: WidthReport | None = Field(default=None, description="width pruning (heads, FFN neurons), when asked for")
    start_time: str
    completion_time: str

    @model_validator(mode="after")
    def _numbers_are_finite(self) -> TrainerResult:
        # A NaN accuracy compares False with every target, so it must never reach a verdict.
        bad = non_finite_paths(self.model_dump(by_alias=True, mode="python"))
        if bad:
            raise ValueError(f"non-finite numbers in {', '.join(bad[:5])}")
        return self

    @model_validator(mode="after")
    def _chosen_is_listed(self) -> TrainerResult:
        chosen = self.chosen_variant()
        if chosen is None:
            raise ValueError(f"variant {self.variant!r} is not among the variants")
        if chosen.metrics != self.student:
            raise ValueError("student must be the chosen variant's metrics")
        return self

    def chosen_variant(self) -> Variant | None:
        return next((v for v in self.variants if v.name == self.variant), None)

    def metrics_of(self, variant: str) -> ModelMetrics | None:
        """One variant's metrics (fp32, int8), None when it was not exported."""
        return next((v.metrics for v in self.variants if v.name == variant), None)

    def to_json(self) -> str:
        """result.json's text: strict JSON (no NaN or Infinity tokens), camelCase keys."""
        return json.dumps(self.to_wire(), indent=2, allow_nan=False) + "\n"

    @property
    def exit_code(self) -> int:
        return EXIT_ACCEPTED if self.decision.accepted else EXIT_REJECTED

    def termination_message(self, limit: int = 4000) -> str:
        """A compact summary for the pod's termination message (the kubelet keeps 4096 bytes)."""
        body = {
            "ok": True,
            "accepted": self.decision.accepted,
            "paretoScore": round(self.pareto_score, 4),
            "speedup": round(self.speedup, 3),
            "accuracy": self.student.accuracy,
            "variant": self.variant,
            "result": self.artifacts.result,
        }
        text = json.dumps(body, separators=(",", ":"))
        return text[:limit]


def error_message(reason: str, message: str, limit: int = 4000) -> str:
    return json.dumps({"ok": False, "reason": reason, "message": message[:3000]}, separators=(",", ":"))[:limit]
