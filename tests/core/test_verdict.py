"""The acceptance rule, target by target, and the derived scores."""

import pytest

from distillery.api.job import AccuracyDropType, Targets
from distillery.verdict import Measured, accuracy_drop, decide, score

TEACHER = Measured(accuracy=0.90, latency_ms=100.0, size_bytes=1000, parameters=1000)
STUDENT = Measured(accuracy=0.88, latency_ms=40.0, size_bytes=400, parameters=500, memory_bytes=300)


def test_scores_follow_the_product_brief():
    s = score(TEACHER, STUDENT, AccuracyDropType.RELATIVE)
    assert s.speedup == pytest.approx(2.5)
    assert s.accuracy_retention == pytest.approx(0.88 / 0.90)
    assert s.pareto_score == pytest.approx(2.5 * 0.88 / 0.90)
    assert s.compression_ratio == pytest.approx(2.0)


def test_accuracy_drop_relative_and_absolute_as_inc_defines_them():
    assert accuracy_drop(0.80, 0.78, AccuracyDropType.RELATIVE) == pytest.approx(0.025)
    assert accuracy_drop(0.80, 0.78, AccuracyDropType.ABSOLUTE) == pytest.approx(0.02)
    assert accuracy_drop(0.80, 0.85, AccuracyDropType.RELATIVE) < 0


# (targets, accepted?) — each row flips exactly one target around the student's numbers.
TRUTH_TABLE = [
    ({}, True),
    ({"max_latency_ms": 50}, True),
    ({"max_latency_ms": 30}, False),
    ({"min_accuracy": 0.85}, True),
    ({"min_accuracy": 0.89}, False),
    ({"max_accuracy_drop": 0.03}, True),  # relative drop 0.0222
    ({"max_accuracy_drop": 0.02}, False),
    ({"max_accuracy_drop": 0.02, "accuracy_drop_type": "absolute"}, True),  # absolute 0.02
    ({"max_accuracy_drop": 0.019, "accuracy_drop_type": "absolute"}, False),
    ({"min_speedup": 2.5}, True),
    ({"min_speedup": 3.0}, False),
    ({"max_size_bytes": 400}, True),
    ({"max_size_bytes": 399}, False),
    ({"max_memory_bytes": 300}, True),
    ({"max_memory_bytes": 299}, False),
    ({"must_improve_frontier": True}, True),
]


@pytest.mark.parametrize(("targets", "accepted"), TRUTH_TABLE)
def test_truth_table(targets, accepted):
    _, verdict = decide(Targets(**targets), TEACHER, STUDENT)
    assert verdict.accepted is accepted
    assert verdict.reasons


def test_every_missed_target_is_a_reason():
    _, verdict = decide(Targets(max_latency_ms=10, min_speedup=5, min_accuracy=0.95), TEACHER, STUDENT)
    assert not verdict.accepted
    assert len(verdict.reasons) == 3
    assert any("maxLatencyMs" in r for r in verdict.reasons)


def test_frontier_rule_rejects_only_when_asked_and_dominated():
    _, v = decide(Targets(must_improve_frontier=True), TEACHER, STUDENT, dominated_by=["other"])
    assert not v.accepted and "dominated" in v.reasons[0]
    _, v = decide(Targets(), TEACHER, STUDENT, dominated_by=["other"])
    assert v.accepted


# A causal LM: perplexity 30 -> 36 is a relative increase of 0.2.
LM_TEACHER = Measured(accuracy=0.40, latency_ms=80.0, size_bytes=1000, parameters=1000, perplexity=30.0)
LM_STUDENT = Measured(accuracy=0.36, latency_ms=50.0, size_bytes=600, parameters=600, perplexity=36.0)


@pytest.mark.parametrize(("bound", "accepted"), [(0.2, True), (0.25, True), (0.19, False), (0.0, False)])
def test_max_perplexity_increase_is_relative_to_the_teacher(bound, accepted):
    _, verdict = decide(Targets(max_perplexity_increase=bound), LM_TEACHER, LM_STUDENT)
    assert verdict.accepted is accepted
    assert "perplexity increase 0.2000" in verdict.reasons[0] and "36.00 vs 30.00" in verdict.reasons[0]


def test_a_perplexity_target_without_measured_perplexity_rejects_with_a_reason():
    _, verdict = decide(Targets(max_perplexity_increase=1.0), TEACHER, STUDENT)
    assert not verdict.accepted and "perplexity was not measured" in verdict.reasons[0]


def test_decode_speedup_is_the_latency_ratio_for_a_causal_lm():
    scores, verdict = decide(Targets(min_speedup=1.6), LM_TEACHER, LM_STUDENT)
    assert scores.speedup == pytest.approx(1.6) and verdict.accepted


def test_a_memory_target_on_an_unmeasured_model_is_a_miss_not_a_pass():
    unmeasured = Measured(accuracy=0.88, latency_ms=40.0, size_bytes=400, parameters=500)
    _, verdict = decide(Targets(max_memory_bytes=10**12), TEACHER, unmeasured)
    assert not verdict.accepted
    assert verdict.reasons == ["memory was not measured, so maxMemoryBytes cannot be checked"]
