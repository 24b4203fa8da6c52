"""The frontier and best trial of a table of trials, and seeds from registered students."""

from distillery.api.job import OptimizeFor
from distillery.api.search import Objective, SearchTrial, TrialParams
from distillery.search.trials import best_trial, frontier_of, seeds_from_students
from tests.search.helpers import search_spec

ACC_LAT = [Objective.ACCURACY, Objective.LATENCY]


def trial(index, accuracy=None, latency=None, size=None, accepted=None, score=None, **params):
    return SearchTrial(name=f"s-t{index:03d}", index=index, params=TrialParams(**params), accuracy=accuracy,
                       latency_ms=latency, size_bytes=size, accepted=accepted, pareto_score=score)


TABLE = [
    trial(0, 0.95, 4.0, 4000, True, 1.9),   # most accurate
    trial(1, 0.90, 2.0, 2000, True, 2.7),   # a trade-off
    trial(2, 0.89, 2.5, 1000, False, 2.0),  # dominated by t001 on accuracy/latency, smallest file
    trial(3, 0.80, 1.0, 3000, False, 3.0),  # fastest
    trial(4),                               # failed: nothing measured
    trial(5, 0.90, 2.0, 2000, True, 2.7),   # equal to t001
]


def test_frontier_of_accuracy_and_latency():
    assert frontier_of(TABLE, ACC_LAT) == ["s-t000", "s-t001", "s-t003", "s-t005"]


def test_frontier_with_size_keeps_the_smallest_file():
    assert "s-t002" in frontier_of(TABLE, [Objective.ACCURACY, Objective.LATENCY, Objective.SIZE])
    assert frontier_of(TABLE, [Objective.SIZE]) == ["s-t002"]


def test_frontier_of_nothing_measured_is_empty():
    assert frontier_of([trial(0), trial(1)], ACC_LAT) == []


def test_best_trial_follows_the_preference_among_accepted_trials():
    assert best_trial(TABLE, OptimizeFor.ACCURACY).name == "s-t000"
    assert best_trial(TABLE, OptimizeFor.LATENCY).name == "s-t001"  # t003 is faster but not accepted
    assert best_trial(TABLE, OptimizeFor.PARETO_SCORE).name == "s-t001"  # the first of equals
    assert best_trial(TABLE, OptimizeFor.SIZE).name == "s-t001"
    assert best_trial([t for t in TABLE if not t.accepted], OptimizeFor.ACCURACY) is None


def student(name, recipe, score, on_frontier, layers_kept=(0, 1), teacher_layers=6):
    return {"metadata": {"name": name},
            "spec": {"recipe": recipe, "paretoScore": score, "layersKept": list(layers_kept),
                     "teacherLayers": teacher_layers},
            "status": {"onFrontier": on_frontier}}


def test_seeds_frontier_first_then_by_score_projected_and_deduplicated():
    space = search_spec({"keepLayers": {"min": 1, "max": 4}, "int8": [False, True],
                         "temperature": [1.0, 4.0]}).space
    students = [
        student("low", {"keepLayers": 2, "int8": True}, 1.5, False),
        student("frontier", {"keepLayers": 9, "int8": False, "temperature": 3.0, "epochs": 7}, 1.0, True),
        student("high", {"keepLayers": 3}, 2.5, False),
        student("same-as-high", {"keepLayers": 3}, 2.0, False),
        student("no-recipe", None, 9.0, True),
        student("ratio", {"keepRatio": 0.5}, 0.5, False, layers_kept=(0,)),  # depth from the layers kept
    ]
    seeds = seeds_from_students(students, space)
    assert [name for name, _ in seeds] == ["frontier", "high", "low", "ratio"]
    by_name = dict(seeds)
    # Snapped to the space (9 layers -> 4, temperature 3 -> 4), epochs dropped (not searched).
    assert by_name["frontier"] == TrialParams(keep_layers=4, int8=False, temperature=4.0)
    assert by_name["high"] == TrialParams(keep_layers=3)
    assert by_name["ratio"] == TrialParams(keep_layers=1)


def test_seeds_in_a_ratio_space_come_from_the_depth_kept():
    space = search_spec({"keepRatio": {"min": 0.25, "max": 1.0, "step": 0.25}}).space
    seeds = seeds_from_students([student("a", {"keepLayers": 3}, 1.0, True, layers_kept=(0, 2, 5))], space)
    assert seeds == [("a", TrialParams(keep_ratio=0.5))]
