"""The acceptance rule and the derived scores: pure functions of measured metrics.

Shared by the trainer (which decides) and the operator (which re-checks the frontier rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distillery.api.job import AccuracyDropType, ModelMetrics, Targets


@dataclass(frozen=True)
class Measured:
    """The few numbers the rule needs for one model."""

    accuracy: float
    latency_ms: float
    size_bytes: int
    parameters: int
    perplexity: float | None = None  # causal-lm only
    memory_bytes: int | None = None  # None when not measured


def measured(metrics: ModelMetrics) -> Measured | None:
    """The numbers the rule needs from a model's metrics, or None when accuracy or latency is missing."""
    if metrics.accuracy is None or metrics.latency_p50_ms is None:
        return None
    return Measured(accuracy=metrics.accuracy, latency_ms=metrics.latency_p50_ms, size_bytes=metrics.size_bytes or 0,
                    parameters=metrics.parameters or 0, perplexity=metrics.perplexity,
                    memory_bytes=metrics.memory_bytes)


def perplexity_increase(teacher: Measured, student: Measured) -> float | None:
    """(student - teacher) / teacher perplexity, None when either was not measured."""
    if teacher.perplexity is None or student.perplexity is None or teacher.perplexity <= 0:
        return None
    return (student.perplexity - teacher.perplexity) / teacher.perplexity


@dataclass(frozen=True)
class Scores:
    speedup: float
    accuracy_retention: float
    compression_ratio: float
    pareto_score: float
    accuracy_drop: float  # in the unit the targets ask for (relative or absolute)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reasons: list[str] = field(default_factory=list)


# Targets are compared with a small tolerance so that a student exactly on a bound (0.90 - 0.88 is
# 0.020000000000000018 in floating point) is not rejected by rounding noise.
EPS = 1e-9


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def accuracy_drop(teacher_acc: float, student_acc: float, kind: AccuracyDropType) -> float:
    """Intel Neural Compressor's criterion: relative = (t - s) / t, absolute = t - s."""
    if kind == AccuracyDropType.ABSOLUTE:
        return teacher_acc - student_acc
    return _ratio(teacher_acc - student_acc, teacher_acc)


def score(teacher: Measured, student: Measured, drop_type: AccuracyDropType) -> Scores:
    speedup = _ratio(teacher.latency_ms, student.latency_ms)
    retention = _ratio(student.accuracy, teacher.accuracy)
    return Scores(
        speedup=speedup,
        accuracy_retention=retention,
        compression_ratio=_ratio(teacher.parameters, student.parameters),
        # From the product brief: (teacher_latency / student_latency) * (student_acc / teacher_acc).
        pareto_score=speedup * retention,
        accuracy_drop=accuracy_drop(teacher.accuracy, student.accuracy, drop_type),
    )


def decide(
    targets: Targets,
    teacher: Measured,
    student: Measured,
    *,
    dominated_by: list[str] | None = None,
) -> tuple[Scores, Verdict]:
    """Check every target that is set; each miss is one human-readable reason.

    `dominated_by` is only consulted when the targets demand improving the frontier; None means
    the frontier is unknown (a local run), which never rejects on its own.
    """
    s = score(teacher, student, targets.accuracy_drop_type)
    misses: list[str] = []
    passes: list[str] = []

    def check(ok: bool, met: str, missed: str) -> None:
        (passes if ok else misses).append(met if ok else missed)

    if targets.max_latency_ms is not None:
        check(
            student.latency_ms <= targets.max_latency_ms + EPS,
            f"latency {student.latency_ms:.2f} ms <= {targets.max_latency_ms:g} ms",
            f"latency {student.latency_ms:.2f} ms exceeds maxLatencyMs {targets.max_latency_ms:g}",
        )
    if targets.min_accuracy is not None:
        check(
            student.accuracy >= targets.min_accuracy - EPS,
            f"accuracy {student.accuracy:.4f} >= {targets.min_accuracy:g}",
            f"accuracy {student.accuracy:.4f} is below minAccuracy {targets.min_accuracy:g}",
        )
    if targets.max_accuracy_drop is not None:
        kind = targets.accuracy_drop_type.value
        check(
            s.accuracy_drop <= targets.max_accuracy_drop + EPS,
            f"{kind} accuracy drop {s.accuracy_drop:.4f} <= {targets.max_accuracy_drop:g}",
            f"{kind} accuracy drop {s.accuracy_drop:.4f} exceeds maxAccuracyDrop "
            f"{targets.max_accuracy_drop:g}",
        )
    if targets.min_speedup is not None:
        check(
            s.speedup >= targets.min_speedup - EPS,
            f"speedup {s.speedup:.2f}x >= {targets.min_speedup:g}x",
            f"speedup {s.speedup:.2f}x is below minSpeedup {targets.min_speedup:g}x",
        )
    if targets.max_perplexity_increase is not None:
        increase = perplexity_increase(teacher, student)
        bound = targets.max_perplexity_increase
        if increase is None:
            misses.append("perplexity was not measured, so maxPerplexityIncrease cannot be checked")
        else:
            check(
                increase <= bound + EPS,
                f"perplexity increase {increase:.4f} <= {bound:g} ({student.perplexity:.2f} vs {teacher.perplexity:.2f})",
                f"perplexity increase {increase:.4f} exceeds maxPerplexityIncrease {bound:g} "
                f"({student.perplexity:.2f} vs {teacher.perplexity:.2f})",
            )
    if targets.max_size_bytes is not None:
        check(
            student.size_bytes <= targets.max_size_bytes,
            f"size {student.size_bytes} bytes <= {targets.max_size_bytes}",
            f"size {student.size_bytes} bytes exceeds maxSizeBytes {targets.max_size_bytes}",
        )
    if targets.max_memory_bytes is not None:
        if student.memory_bytes is None:
            misses.append("memory was not measured, so maxMemoryBytes cannot be checked")
        else:
            check(
                student.memory_bytes <= targets.max_memory_bytes,
                f"memory {student.memory_bytes} bytes <= {targets.max_memory_bytes}",
                f"memory {student.memory_bytes} bytes exceeds maxMemoryBytes {targets.max_memory_bytes}",
            )
    if targets.must_improve_frontier and dominated_by:
        misses.append("dominated on the frontier by " + ", ".join(sorted(dominated_by)))
    if misses:
        return s, Verdict(False, misses)
    return s, Verdict(True, passes or ["no targets set"])
