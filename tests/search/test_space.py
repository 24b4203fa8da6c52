"""The space as finite dimensions, its grid, its checks, and the job spec of one trial."""

import pytest

from distillery.api.job import ExtractionMethod, ImportanceMetric, OptimizeFor
from distillery.api.search import SearchAlgorithm, TrialParams
from distillery.search.space import (
    check_space,
    complete_point,
    dimensions,
    grid_points,
    grid_size,
    resolve_algorithm,
    snap,
    trial_spec,
    trial_targets,
)
from tests.search.helpers import search_spec


def test_dimensions_lists_only_set_dimensions_in_grid_order():
    spec = search_spec({"int8": [False, True], "keepLayers": {"min": 1, "max": 5, "step": 2},
                        "learningRate": [1e-3, 3e-3]})
    dims = dimensions(spec.space)
    assert list(dims) == ["keep_layers", "int8", "learning_rate"]
    assert dims["keep_layers"] == [1, 3, 5]
    assert dims["int8"] == [False, True]


def test_grid_walks_every_point_once_in_a_fixed_order():
    spec = search_spec({"keepLayers": {"min": 1, "max": 3}, "int8": [False, True]})
    points = grid_points(spec.space)
    assert grid_size(spec.space) == 6 == len(points)
    assert [(p.keep_layers, p.int8) for p in points] == [(1, False), (1, True), (2, False), (2, True),
                                                           (3, False), (3, True)]
    assert all(p.temperature is None for p in points)  # dimensions not searched keep the template's
    assert grid_points(spec.space) == points


def test_ratio_range_values():
    spec = search_spec({"keepRatio": {"min": 0.25, "max": 0.75, "step": 0.25}})
    assert dimensions(spec.space)["keep_ratio"] == [0.25, 0.5, 0.75]


def test_auto_is_grid_when_the_grid_fits_the_budget_else_nsga2():
    small = search_spec({"keepLayers": {"min": 1, "max": 4}, "int8": [False, True]})  # 8 points
    assert resolve_algorithm(small) == SearchAlgorithm.GRID
    large = search_spec({"keepLayers": {"min": 1, "max": 5}, "int8": [False, True]})  # 10 > 8
    assert resolve_algorithm(large) == SearchAlgorithm.NSGA2
    assert resolve_algorithm(search_spec({"int8": [True]}, algorithm="tpe")) == SearchAlgorithm.TPE


def test_trial_spec_applies_the_point_and_the_search_wiring():
    spec = search_spec({"keepRatio": {"min": 0.5, "max": 1, "step": 0.5}}, targets={"maxLatencyMs": 5},
                       optimizeFor="latency")
    params = TrialParams(keep_ratio=0.5, int8=True, temperature=2.0, importance_metric="angular-distance",
                         learning_rate=1e-3, epochs=2, alpha=0.3, method="importance")
    job = trial_spec(spec.template, params, output_uri="/out/search/trials/s-t000", cache_uri="/out/search/cache",
                     targets=trial_targets(spec))
    assert job.student.keep_ratio == 0.5 and job.student.keep_layers is None  # the point's depth replaces it
    assert job.student.importance_metric == ImportanceMetric.ANGULAR_DISTANCE
    assert job.export.int8 is True
    d = job.distillation
    assert (d.temperature, d.alpha, d.learning_rate, d.epochs) == (2.0, 0.3, 1e-3, 2)
    assert job.output.uri == "/out/search/trials/s-t000" and job.output.cache_uri == "/out/search/cache"
    assert job.targets.max_latency_ms == 5 and job.targets.min_accuracy is None  # the search's targets
    assert job.targets.optimize_for == OptimizeFor.LATENCY
    assert job.teacher == spec.template.teacher
    assert spec.template.student.keep_layers == 2  # the template itself is untouched


def test_trial_spec_refuses_an_invalid_point_naming_the_field():
    spec = search_spec({"int8": [True]})
    with pytest.raises(ValueError, match="distillation.temperature"):
        trial_spec(spec.template, TrialParams(temperature=500.0), output_uri="/o", cache_uri="/c",
                   targets=trial_targets(spec))
    with pytest.raises(ValueError, match="space.method: explicit"):
        trial_spec(spec.template, TrialParams(method=ExtractionMethod.EXPLICIT), output_uri="/o", cache_uri="/c",
                   targets=trial_targets(spec))


def test_a_good_space_has_no_problems():
    spec = search_spec({"keepLayers": {"min": 1, "max": 6}, "int8": [False, True],
                        "importanceMetric": ["ablation", "block-influence"]})
    assert check_space(spec, teacher_layers=6) == []
    assert check_space(spec, teacher_layers=None) == []  # depth unknown: not checked


@pytest.mark.parametrize("space, more, layers, expected", [
    ({}, {}, 12, "space sets no dimension"),
    ({"keepLayers": {"min": 2, "max": 14}}, {}, 12, "space.keepLayers.max 14 exceeds the teacher's 12 layers"),
    ({"method": ["uniform", "explicit"]}, {}, 12, "space.method: explicit is not searchable"),
    ({"importanceMetric": ["ablation"], "method": ["uniform", "first"]}, {}, 12, "space.importanceMetric"),
    ({"keepRatio": {"min": 0.1, "max": 0.2, "step": 0.05}}, {}, 4, "space.keepRatio"),
    ({"temperature": [2.0, 150.0]}, {}, 12, "space.temperature: 150.0 gives an invalid trial"),
    ({"learningRate": [2.0]}, {}, 12, "space.learningRate"),
])
def test_check_space_names_the_field(space, more, layers, expected):
    problems = check_space(search_spec(space, **more), teacher_layers=layers)
    assert any(expected in p for p in problems), problems


def test_an_explicit_template_cannot_be_searched_over_depth():
    spec = search_spec({"keepLayers": {"min": 1, "max": 2}})
    spec.template.student.method = ExtractionMethod.EXPLICIT
    spec.template.student.layers = [0, 1]
    assert any(p.startswith("template.student.method: explicit") for p in check_space(spec, 6))


def test_snap_and_complete_point():
    assert snap("keep_layers", 5, [1, 3, 7]) == 3  # a tie takes the smaller
    assert snap("temperature", 100.0, [1.0, 2.0]) == 2.0
    assert snap("method", "first", ["uniform", "importance"]) is None
    spec = search_spec({"keepLayers": {"min": 1, "max": 4}, "int8": [True, False], "temperature": [1.0, 8.0],
                        "method": ["uniform", "first"]})
    # Missing dimensions take the template's value snapped (keepLayers 2, int8 false, temperature
    # 4 -> 1.0); a value without a snap (the template's importance) the first listed; dimensions
    # outside the space are dropped.
    point = complete_point(spec, TrialParams(int8=None, epochs=9))
    assert point == TrialParams(keep_layers=2, int8=False, temperature=1.0, method="uniform")
    assert complete_point(spec, TrialParams(keep_layers=9, int8=True, method="first")).keep_layers == 4


def test_a_range_too_long_to_walk_is_a_problem_not_a_hang():
    spec = search_spec({"keepRatio": {"min": 0.000001, "max": 1, "step": 0.000001}})
    assert check_space(spec, teacher_layers=None) == [
        "space.keepRatio: 1000000 values from min to max by step; at most 1024"]
    with pytest.raises(ValueError, match="space.keepRatio"):
        dimensions(spec.space)
