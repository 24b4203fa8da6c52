"""What the trainer reports: result.json in the store and a compact termination message.

The operator reads these; keeping the model here (no torch) lets both sides share it.
"""

from __future__ import annotations

import json

from pydantic import Field

from distillery.api.base import ApiModel
from distillery.api.job import Artifacts, Decision, Hardware, ModelMetrics, Task

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


class TrainerResult(ApiModel):
    job: str
    task: Task
    hardware: Hardware
    fingerprint: str = Field(description="hash of the spec parts that shape the trained student")
    spec_hash: str = Field(description="hash of the whole spec")
    teacher_uri: str
    teacher: ModelMetrics
    student: ModelMetrics
    student_int8: ModelMetrics | None = None
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
    start_time: str
    completion_time: str

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
            "result": self.artifacts.result,
        }
        text = json.dumps(body, separators=(",", ":"))
        return text[:limit]


def error_message(reason: str, message: str, limit: int = 4000) -> str:
    return json.dumps({"ok": False, "reason": reason, "message": message[:3000]}, separators=(",", ":"))[:limit]
