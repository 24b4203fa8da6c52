"""The next trial's parameters, from the search spec and the trials so far; nothing else.

No state lives outside the arguments: for nsga2 and tpe an in-memory Optuna study is rebuilt from
the finished trials on every call and its sampler seeded from spec.seed and the number of trials, so
the same history always gives the same next point (an operator restart loses and repeats nothing).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from distillery.api.search import (
    DistillationSearchSpec,
    Objective,
    SearchAlgorithm,
    TrialParams,
)
from distillery.search.space import (
    NUMERIC_DIMENSIONS,
    camel,
    complete_point,
    dimensions,
    grid_size,
    iter_grid,
    point_key,
    resolve_algorithm,
)

# Optuna's asks that land on a point already tried before we give up and take the next untried
# grid point (a nearly exhausted space makes repeats likely).
MAX_REPEATED_ASKS = 32
# Untried points compared with the sampler's last proposal when it only repeats (bounds the work
# on a huge space; the grid's first ones are as good a pool as any).
MAX_NEAREST_CANDIDATES = 10_000
# NSGA-II's population: small budgets need a small one, or the whole budget is its random first generation.
MIN_POPULATION, MAX_POPULATION = 4, 50


@dataclass(frozen=True)
class TrialRecord:
    """A trial the search has started: its point and, once measured, its objective values (raw, in
    spec.objectives order: accuracy, latency ms, size bytes). values None: failed or not done."""

    params: TrialParams
    values: tuple[float, ...] | None
    finished: bool


def next_params(spec: DistillationSearchSpec, records: list[TrialRecord],
                seeds: list[TrialParams]) -> tuple[TrialParams, bool] | None:
    """(params, seeded) of the next trial, or None when every point of the space has been tried.
    Untried seeds come first (completed to points of the space), then the algorithm's choice."""
    tried = {point_key(complete_point(spec, r.params)) for r in records}
    for seed in seeds:
        point = complete_point(spec, seed)
        if point_key(point) not in tried:
            return point, True
    if len(tried) >= grid_size(spec.space):
        return None  # every point tried (tried holds only points of the space)
    untried = (p for p in iter_grid(spec.space) if point_key(p) not in tried)
    if resolve_algorithm(spec) == SearchAlgorithm.GRID:
        return next(untried), False
    return _optuna_point(spec, records, tried, untried), False


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The sampler's seed for the next ask: plain arithmetic, not hash(), so it is stable across runs."""
    return (seed * 1_000_003 + trials_so_far * 7919) % (2**32)


def _optuna_point(spec: DistillationSearchSpec, records: list[TrialRecord], tried: set,
                  untried: Iterator[TrialParams]) -> TrialParams:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = dimensions(spec.space)
    distributions = _distributions(dims)
    sampler = _sampler(spec, optuna, sampler_seed(spec.seed, len(records)))
    directions = ["maximize" if o == Objective.ACCURACY else "minimize" for o in spec.objectives]
    study = optuna.create_study(directions=directions, sampler=sampler)
    _replay(study, sampler, spec, records, dims, distributions, optuna)
    point = None
    for _ in range(MAX_REPEATED_ASKS):
        trial = study.ask(distributions)
        point = complete_point(spec, _params_of(trial.params, dims))
        if point_key(point) not in tried:
            return point
        # A repeat teaches the sampler nothing new; mark it failed so the next ask moves on.
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    # The sampler keeps proposing tried points (it has converged): the untried point nearest its
    # last proposal follows its lead without repeating a trial.
    return min(itertools.islice(untried, MAX_NEAREST_CANDIDATES), key=lambda p: _distance(p, point, dims))


def _distance(a: TrialParams, b: TrialParams, dims: dict[str, list]) -> float:
    """Per dimension: index distance over the range for numbers, 0 or 1 for categories."""
    total = 0.0
    for name, values in dims.items():
        x, y = getattr(a, name), getattr(b, name)
        if name in NUMERIC_DIMENSIONS:
            total += abs(values.index(x) - values.index(y)) / max(1, len(values) - 1)
        else:
            total += float(x != y)
    return total


def _distributions(dims: dict[str, list]) -> dict:
    """Ordered numbers as an index range (so TPE and NSGA-II see that 3 layers lie between 2 and
    4), everything else as categories."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out = {}
    for name, values in dims.items():
        if name in NUMERIC_DIMENSIONS:
            out[camel(name)] = IntDistribution(0, len(values) - 1)
        else:
            out[camel(name)] = CategoricalDistribution([_category(v) for v in values])
    return out


def _category(value):
    return value.value if hasattr(value, "value") else value


def _encode(params: TrialParams, dims: dict[str, list]) -> dict:
    out = {}
    for name, values in dims.items():
        value = getattr(params, name)
        if name in NUMERIC_DIMENSIONS:
            out[camel(name)] = values.index(value)
        else:
            out[camel(name)] = _category(value)
    return out


def _params_of(encoded: dict, dims: dict[str, list]) -> TrialParams:
    values = {}
    for name, choices in dims.items():
        raw = encoded[camel(name)]
        values[name] = choices[raw] if name in NUMERIC_DIMENSIONS else raw
    return TrialParams(**values)


def _sampler(spec: DistillationSearchSpec, optuna, seed: int):
    if resolve_algorithm(spec) == SearchAlgorithm.TPE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=_startup(spec))
    population = max(MIN_POPULATION, min(MAX_POPULATION, spec.budget.max_trials // 4))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


def _startup(spec: DistillationSearchSpec) -> int:
    """Random trials before TPE models the space: a quarter of the budget, at least 3, at most 10."""
    return max(3, min(10, spec.budget.max_trials // 4))


def _replay(study, sampler, spec, records, dims, distributions, optuna) -> None:
    """Add the finished trials to the study in order; NSGA-II also needs each trial's generation,
    assigned as it would have been had the trials been asked of it one by one."""
    generation_key = None
    if isinstance(sampler, optuna.samplers.NSGAIISampler):
        generation_key = sampler._get_generation_key()
    population = getattr(sampler, "_population_size", None)
    generation, in_generation = 0, 0
    for record in records:
        if not record.finished:
            continue
        params = _encode(complete_point(spec, record.params), dims)
        if record.values is None:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                      state=optuna.trial.TrialState.FAIL))
            continue
        attrs = {}
        if generation_key is not None:
            if in_generation >= population:
                generation, in_generation = generation + 1, 0
            attrs[generation_key] = generation
            in_generation += 1
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  values=list(record.values), system_attrs=attrs))
