"""The next trial's parameters: seeds first, grid order or Optuna, reproducible, never a repeat."""

import pytest

from distillery.api.search import TrialParams
from distillery.search.sampler import TrialRecord, next_params
from distillery.search.space import grid_points, point_key
from tests.search.helpers import search_spec

SMALL = {"keepLayers": {"min": 1, "max": 3}, "int8": [False, True]}  # 6 points
LARGE = {"keepLayers": {"min": 1, "max": 6}, "int8": [False, True], "temperature": [1.0, 2.0, 4.0]}  # 36


def measure(params: TrialParams) -> tuple[float, float]:
    """A made-up but plausible trade-off: deeper is more accurate and slower, int8 is faster."""
    accuracy = 0.5 + 0.08 * params.keep_layers - (0.01 if params.int8 else 0) - 0.005 * (params.temperature or 0)
    latency = params.keep_layers * (0.6 if params.int8 else 1.0)
    return (accuracy, latency)


def run_search(spec, steps: int, seeds=()) -> list[TrialRecord]:
    records: list[TrialRecord] = []
    for _ in range(steps):
        nxt = next_params(spec, records, list(seeds))
        if nxt is None:
            break
        params, _seeded = nxt
        records.append(TrialRecord(params, measure(params), True))
    return records


def test_grid_goes_in_order_and_ends():
    spec = search_spec(SMALL)
    records = run_search(spec, 10)
    assert [r.params for r in records] == grid_points(spec.space)
    assert next_params(spec, records, []) is None


def test_seeds_come_first_completed_to_points_and_flagged():
    spec = search_spec(SMALL)
    seed = TrialParams(keep_layers=3)  # int8 missing: the template's (false)
    params, seeded = next_params(spec, [], [seed])
    assert seeded and params == TrialParams(keep_layers=3, int8=False)
    records = [TrialRecord(params, (0.9, 1.0), True)]
    params, seeded = next_params(spec, records, [seed])
    assert not seeded and params == TrialParams(keep_layers=1, int8=False)  # a tried seed is not repeated


def test_running_and_failed_trials_are_not_repeated():
    spec = search_spec(SMALL)
    records = [TrialRecord(TrialParams(keep_layers=1, int8=False), None, False),
               TrialRecord(TrialParams(keep_layers=1, int8=True), None, True)]
    params, _ = next_params(spec, records, [])
    assert params == TrialParams(keep_layers=2, int8=False)


@pytest.mark.parametrize("algorithm", ["nsga2", "tpe"])
def test_optuna_walks_distinct_points_until_the_space_is_exhausted(algorithm):
    spec = search_spec(SMALL, algorithm=algorithm, budget={"maxTrials": 6})
    records = run_search(spec, 10)
    keys = [point_key(r.params) for r in records]
    assert len(records) == 6 and len(set(keys)) == 6
    assert next_params(spec, records, []) is None


@pytest.mark.parametrize("algorithm", ["nsga2", "tpe"])
def test_same_history_same_next_point(algorithm):
    spec = search_spec(LARGE, algorithm=algorithm, budget={"maxTrials": 16})
    first = run_search(spec, 12)
    again = run_search(spec, 12)
    assert [r.params for r in first] == [r.params for r in again]
    # A rebuilt history (as after an operator restart) gives the same next point.
    assert next_params(spec, list(first), []) == next_params(spec, [TrialRecord(r.params, r.values, True)
                                                                     for r in first], [])
    other = run_search(search_spec(LARGE, algorithm=algorithm, seed=1, budget={"maxTrials": 16}), 12)
    assert [r.params for r in other] != [r.params for r in first]
    assert [r.params for r in first] != grid_points(spec.space)[:12]  # the sampler, not the grid, chose


def test_nsga2_uses_the_budget_on_new_points_of_a_large_space():
    spec = search_spec(LARGE, budget={"maxTrials": 20})
    records = run_search(spec, 20)
    assert len({point_key(r.params) for r in records}) == 20
    assert all(r.params.keep_layers is not None and r.params.temperature is not None for r in records)


@pytest.mark.parametrize("algorithm", ["nsga2", "tpe"])
def test_optuna_takes_failed_and_running_trials_in_its_stride(algorithm):
    spec = search_spec(LARGE, algorithm=algorithm, budget={"maxTrials": 16})
    records = run_search(spec, 6)
    records[1] = TrialRecord(records[1].params, None, True)  # failed
    records.append(TrialRecord(TrialParams(keep_layers=6, int8=True, temperature=4.0), None, False))  # running
    params, seeded = next_params(spec, records, [])
    assert not seeded
    assert point_key(params) not in {point_key(r.params) for r in records}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_learns_from_the_history(seed):
    """Accuracy grows with depth: once past its random start, TPE proposes mostly deep students
    (a random walk over 1..6 layers averages 3.5)."""
    spec = search_spec(LARGE, algorithm="tpe", seed=seed, objectives=["accuracy"], budget={"maxTrials": 16})
    records: list[TrialRecord] = []
    for _ in range(16):
        params, _ = next_params(spec, records, [])
        records.append(TrialRecord(params, (measure(params)[0],), True))
    late = [r.params.keep_layers for r in records[-6:]]
    assert sum(late) / len(late) >= 4.5, late


def test_a_huge_space_is_sampled_without_listing_it():
    many = [round(0.01 * i, 2) for i in range(1, 33)]
    spec = search_spec({"keepLayers": {"min": 1, "max": 1000}, "temperature": many, "alpha": many,
                        "learningRate": many, "epochs": list(range(1, 33))}, budget={"maxTrials": 50})
    records = []
    for _ in range(3):
        params, _ = next_params(spec, records, [])
        records.append(TrialRecord(params, (0.9, 1.0), True))
    assert len({point_key(r.params) for r in records}) == 3
