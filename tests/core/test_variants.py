"""Which variant becomes the student: each judged alone, the best by optimizeFor among those
that meet every target, else the best of all (so the rejection names the one a job would keep)."""

from __future__ import annotations

import pytest

from distillery.api.job import ModelMetrics, OptimizeFor, Targets
from distillery.variants import NOT_JUDGED, Candidate, judge, preference_key

TEACHER = ModelMetrics(accuracy=0.90, latency_p50_ms=100.0, size_bytes=4000, parameters=1000)
FP32 = ModelMetrics(accuracy=0.89, latency_p50_ms=40.0, size_bytes=2000, parameters=500)
INT8 = ModelMetrics(accuracy=0.87, latency_p50_ms=20.0, size_bytes=600, parameters=500)


def both() -> list[Candidate]:
    return [Candidate("fp32", FP32, "file:///o/model.onnx"), Candidate("int8", INT8, "file:///o/model.int8.onnx")]


@pytest.mark.parametrize(("optimize_for", "chosen"), [
    (OptimizeFor.PARETO_SCORE, "int8"),  # 5.0 x 0.967 beats 2.5 x 0.989
    (OptimizeFor.LATENCY, "int8"),
    (OptimizeFor.SIZE, "int8"),
    (OptimizeFor.ACCURACY, "fp32"),
])
def test_the_preference_picks_among_variants_that_meet_every_target(optimize_for, chosen):
    judged = judge(Targets(max_accuracy_drop=0.05, optimize_for=optimize_for), TEACHER, both())
    assert [v.accepted for v in judged.variants] == [True, True]
    assert judged.chosen.name == chosen and judged.verdict.accepted
    assert judged.chosen.artifact.endswith("model.int8.onnx" if chosen == "int8" else "model.onnx")


def test_a_variant_that_misses_a_target_is_never_chosen_over_one_that_meets_them():
    # int8 loses 3.3 % accuracy: it fails maxAccuracyDrop 0.02 although it is twice as fast.
    judged = judge(Targets(max_accuracy_drop=0.02, optimize_for=OptimizeFor.LATENCY), TEACHER, both())
    fp32, int8 = judged.variants
    assert fp32.accepted and not int8.accepted and "maxAccuracyDrop" in int8.reasons[0]
    assert judged.chosen.name == "fp32" and judged.verdict.accepted
    assert judged.scores.speedup == pytest.approx(2.5)


def test_when_none_meets_the_targets_the_preferred_one_explains_the_rejection():
    judged = judge(Targets(min_speedup=10.0), TEACHER, both())
    assert not any(v.accepted for v in judged.variants)
    assert judged.chosen.name == "int8" and not judged.verdict.accepted
    assert "speedup 5.00x is below minSpeedup 10x" in judged.verdict.reasons[0]


def test_a_tie_keeps_the_unquantized_model():
    same = [Candidate("fp32", FP32), Candidate("int8", FP32)]
    assert judge(Targets(), TEACHER, same).chosen.name == "fp32"


def test_a_variant_without_latency_is_listed_but_not_judged():
    no_latency = ModelMetrics(accuracy=0.88, size_bytes=600, parameters=500)
    judged = judge(Targets(), TEACHER, [Candidate("fp32", FP32), Candidate("int8", no_latency)])
    assert judged.variants[1].reasons == [NOT_JUDGED] and judged.variants[1].speedup is None
    assert judged.chosen.name == "fp32"
    with pytest.raises(ValueError, match="no variant"):
        judge(Targets(), TEACHER, [Candidate("int8", no_latency)])


def test_the_frontier_is_consulted_per_variant():
    judged = judge(Targets(must_improve_frontier=True), TEACHER, both(),
                   dominated_by=lambda m: ["registered-a"] if m is INT8 else [])
    assert [v.accepted for v in judged.variants] == [True, False]
    assert judged.chosen.name == "fp32"


def test_preference_keys_order_as_documented():
    fast = dict(accuracy=0.8, latency_ms=10.0, size_bytes=5, pareto_score=1.0)
    accurate = dict(accuracy=0.9, latency_ms=20.0, size_bytes=9, pareto_score=2.0)
    assert preference_key(OptimizeFor.LATENCY, **fast) > preference_key(OptimizeFor.LATENCY, **accurate)
    assert preference_key(OptimizeFor.ACCURACY, **accurate) > preference_key(OptimizeFor.ACCURACY, **fast)
    assert preference_key(OptimizeFor.SIZE, **fast) > preference_key(OptimizeFor.SIZE, **accurate)
    assert preference_key(OptimizeFor.PARETO_SCORE, **accurate) > preference_key(OptimizeFor.PARETO_SCORE, **fast)
