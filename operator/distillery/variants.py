"""Which measured variant (fp32, int8) of a student becomes the job's student: pure rules.

Every variant is judged on its own against the targets; the chosen one is the best by the job's
`targets.optimizeFor` among those that meet every target, or, when none does, the best among all
(so a rejection is explained by the variant the job would have kept). A search ranks its trials
with the same preference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distillery.api.job import Decision, ModelMetrics, OptimizeFor, Targets, Variant
from distillery.verdict import Scores, Verdict, decide, measured

if TYPE_CHECKING:
    from distillery.api.result import TrainerResult

FP32, INT8 = "fp32", "int8"
NOT_JUDGED = "not judged: its accuracy or latency was not measured"


def preference_key(optimize_for: OptimizeFor, *, accuracy: float, latency_ms: float, size_bytes: int,
                   pareto_score: float) -> tuple:
    """A sort key, larger is better: the preferred quantity first, accuracy or latency to break ties."""
    if optimize_for == OptimizeFor.LATENCY:
        return (-latency_ms, accuracy)
    if optimize_for == OptimizeFor.ACCURACY:
        return (accuracy, -latency_ms)
    if optimize_for == OptimizeFor.SIZE:
        return (-size_bytes, accuracy)
    return (pareto_score, accuracy)


@dataclass(frozen=True)
class Candidate:
    """One exported variant before it is judged."""

    name: str
    metrics: ModelMetrics
    artifact: str | None = None


@dataclass(frozen=True)
class Judged:
    variants: list[Variant]
    chosen: Variant
    scores: Scores
    verdict: Verdict


def judge(targets: Targets, teacher: ModelMetrics, candidates: list[Candidate],
          dominated_by: Callable[[ModelMetrics], list[str] | None] | None = None) -> Judged:
    """Judge each candidate with the shared rule and choose one. `dominated_by` gives, for a
    variant's metrics, the registered models that dominate it (None: frontier not consulted).
    Raises ValueError when the teacher or every candidate lacks accuracy or latency."""
    t = measured(teacher)
    if t is None:
        raise ValueError("the teacher's accuracy and latency are required")
    variants: list[Variant] = []
    judged: list[tuple[Variant, Scores, Verdict]] = []
    for c in candidates:
        m = measured(c.metrics)
        if m is None:  # e.g. a causal LM's int8 graph in results from before its decoding was measured
            variants.append(Variant(name=c.name, artifact=c.artifact, metrics=c.metrics, accepted=False,
                                    reasons=[NOT_JUDGED]))
            continue
        scores, verdict = decide(targets, t, m, dominated_by=dominated_by(c.metrics) if dominated_by else None)
        variant = Variant(name=c.name, artifact=c.artifact, metrics=c.metrics, speedup=round(scores.speedup, 4),
                          accuracy_retention=round(scores.accuracy_retention, 6),
                          compression_ratio=round(scores.compression_ratio, 4),
                          pareto_score=round(scores.pareto_score, 6), accepted=verdict.accepted,
                          reasons=verdict.reasons)
        variants.append(variant)
        judged.append((variant, scores, verdict))
    if not judged:
        raise ValueError("no variant has a measured accuracy and latency")
    pool = [j for j in judged if j[2].accepted] or judged

    def key(j):
        v, s = j[0], j[1]
        return preference_key(targets.optimize_for, accuracy=v.metrics.accuracy, latency_ms=v.metrics.latency_p50_ms,
                              size_bytes=v.metrics.size_bytes or 0, pareto_score=s.pareto_score)

    # max() keeps the first of equals, and fp32 comes first: a tie keeps the unquantized model.
    chosen, scores, verdict = max(pool, key=key)
    return Judged(variants, chosen, scores, verdict)


def result_fields(judged: Judged) -> dict:
    """A TrainerResult's chosen-student fields: its metrics, scores (rounded as written) and decision."""
    s, v = judged.scores, judged.verdict
    return {"student": judged.chosen.metrics, "variant": judged.chosen.name, "variants": judged.variants,
            "speedup": round(s.speedup, 4), "accuracy_retention": round(s.accuracy_retention, 6),
            "compression_ratio": round(s.compression_ratio, 4), "pareto_score": round(s.pareto_score, 6),
            "decision": Decision(accepted=v.accepted, reasons=v.reasons)}


def candidates_of(result: TrainerResult) -> list[Candidate]:
    """The variants a stored result lists, to be judged again (their stored verdicts are not believed)."""
    return [Candidate(v.name, v.metrics, v.artifact) for v in result.variants]


def rejudge(result: TrainerResult, targets: Targets,
            dominated_by: Callable[[ModelMetrics], list[str] | None] | None = None) -> tuple[TrainerResult, Judged]:
    """The result with every variant, the choice and the decision recomputed from its measured numbers."""
    judged = judge(targets, result.teacher, candidates_of(result), dominated_by)
    return result.model_copy(update=result_fields(judged)), judged
