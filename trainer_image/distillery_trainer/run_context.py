"""What one run knows, filled in stage by stage (see stages.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from distillery.api.job import DistillationJob, DistillationJobSpec, ModelMetrics
from distillery.api.result import EnsembleReport, IncrementalReport, InputDigests, TrainerResult
from distillery.store import Store
from distillery.variants import Judged
from distillery_trainer.checkpoint import Checkpoints, CheckpointState
from distillery_trainer.distributed import SINGLE, RankSignal, World
from distillery_trainer.encode import Encoded
from distillery_trainer.ensemble import EnsembleRun
from distillery_trainer.evaluation import Quality
from distillery_trainer.incremental import EwcPenalty, OldScore
from distillery_trainer.loading import Inputs
from distillery_trainer.nets import Net
from distillery_trainer.onnx_tools import Latency
from distillery_trainer.progress import Progress
from distillery_trainer.tasks import TaskStrategy
from distillery_trainer.teacher import TeacherSide


@dataclass
class Exported:
    """The export stage's files (under the run's work folder) and the round-trip check."""

    staging: Path  # what write uploads: model/, model.onnx, model.int8.onnx
    weights_dir: Path
    student_onnx: Path
    teacher_onnx: Path  # the teacher as ONNX, exported here unless it came as ONNX
    int8_onnx: Path | None
    example: tuple  # the benchmark batch
    onnx_max_abs_diff: float
    teacher_parameters: int
    teacher_layers: int | None


@dataclass
class Measurements:
    """The benchmark stage's numbers for each model."""

    teacher: ModelMetrics
    student: ModelMetrics
    student_int8: ModelMetrics | None


@dataclass
class RunContext:
    job: DistillationJob
    store: Store
    progress: Progress
    device: torch.device
    work: Path  # a temporary folder, removed when the run ends
    task: TaskStrategy
    fingerprint: str  # hash of the spec parts that shape the student (names the checkpoints)
    spec_hash: str  # hash of the whole spec
    started: str
    restart: bool = False
    world: World = SINGLE  # under torchrun: this process's rank among the training processes
    signal: RankSignal | None = None  # under torchrun: rank 0's messages to the other ranks
    # Filled in by the stages, in order.
    inputs: Inputs | None = None
    train_data: Encoded | None = None
    eval_data: Encoded | None = None
    digests: InputDigests | None = None
    checkpoints: Checkpoints | None = None
    state: CheckpointState | None = None  # the checkpoint resumed from, then the training state
    teacher: TeacherSide | None = None
    student: Net | None = None
    source_layers: int | None = None
    resume_payload: dict | None = None
    resumed_from: int | None = None
    train_seconds: float = 0.0
    quality: dict[str, Quality] = field(default_factory=dict)  # "teacher", "student"
    ensemble: EnsembleRun | None = None  # ensemble.teachers' outputs and the mixture (stages.ensemble_outputs)
    ensemble_report: EnsembleReport | None = None  # each teacher's and the mixture's accuracy
    previous_train: Encoded | None = None  # incremental: the old splits, encoded like the new ones
    previous_eval: Encoded | None = None
    previous_before: OldScore | None = None  # student.base on the old eval split
    ewc: EwcPenalty | None = None
    incremental_report: IncrementalReport | None = None
    zero_shot: object | None = None  # causal-lm: the labelled eval rows as prompts (lm.text_blocks.ZeroShotSet)
    vocabulary: object | None = None  # student.vocabulary: the VocabularyReport (vocabulary.student_view)
    exported: Exported | None = None
    latencies: list[Latency] = field(default_factory=list)
    measured: Measurements | None = None
    judged: Judged | None = None  # every variant judged, and the one chosen as the student
    result: TrainerResult | None = None  # set by the last stage, or early by a reusable earlier run

    @property
    def spec(self) -> DistillationJobSpec:
        return self.job.spec
