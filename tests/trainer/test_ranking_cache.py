"""The layer ranking is measured once per teacher, data and setting, then reused by every job
(and search trial) that shares the cache: the same layers as a fresh measurement, fewer passes."""

import json

import pytest

from distillery_trainer.extraction import greedy_removal
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress

# A made-up divergence with interactions between layers, so the greedy path is not just "sorted alone".
WEIGHTS = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.6, 0.4]


def divergence_counter():
    calls = []

    def divergence(keep):
        calls.append(tuple(keep))
        dropped = [i for i in range(len(WEIGHTS)) if i not in keep]
        return sum(WEIGHTS[i] for i in dropped) + 0.15 * sum(1 for i in dropped if i + 1 in dropped)
    return divergence, calls


@pytest.mark.parametrize("protected", [frozenset(), frozenset({0, 7})])
def test_replayed_removals_give_the_fresh_answer_for_every_depth(protected):
    n = len(WEIGHTS)
    fresh = {}
    for k in range(2, n):
        divergence, _ = divergence_counter()
        fresh[k] = greedy_removal(n, k, divergence, protected)
    divergence, calls = divergence_counter()
    _, _, path = greedy_removal(n, 5, divergence, protected)  # measured down to 5 layers
    for k in range(2, n):
        divergence, calls = divergence_counter()
        keep, scores, longer = greedy_removal(n, k, divergence, protected, known=path)
        assert (keep, scores) == fresh[k][:2]
        assert calls == [] if k >= 5 else len(calls) > 0  # only steps beyond the known path are measured
        assert longer.order[:len(path.order)] == path.order


def quiet():
    return Progress(show_bar=False)


def test_jobs_sharing_a_cache_measure_the_layers_once(digits_job, tmp_path, capsys):
    cache = f"file://{tmp_path / 'shared'}"
    quick = {"epochs": 1}
    ablation = {"method": "importance", "importanceMetric": "ablation"}
    first, _ = digits_job("a", distillation=quick, student={**ablation, "keepLayers": 4}, output={"cacheUri": cache})
    run(first, progress=quiet())
    entries = list((tmp_path / "shared").glob("layer-ranking-*.json"))
    assert len(entries) == 1
    stored = json.loads(entries[0].read_text())
    assert len(stored["entries"]["ablation"]["order"]) == 2  # 6 layers down to 4

    # A deeper cut on the same teacher and data, with another learning rate: the path is extended.
    second, _ = digits_job("b", distillation={**quick, "learningRate": 0.01}, student={**ablation, "keepLayers": 2},
                           output={"cacheUri": cache})
    shared = run(second, progress=quiet())
    assert "reused the layer ranking (ablation)" in capsys.readouterr().err
    assert len(json.loads(entries[0].read_text())["entries"]["ablation"]["order"]) == 4
    alone, _ = digits_job("c", distillation=quick, student={**ablation, "keepLayers": 2})
    measured_alone = run(alone, progress=quiet())
    assert shared.layers_kept == measured_alone.layers_kept
    assert shared.layer_scores == measured_alone.layer_scores


def test_a_malformed_ranking_is_ignored_and_measured_again(digits_job, tmp_path, capsys):
    cache = tmp_path / "shared"
    job, _ = digits_job("a", distillation={"epochs": 0}, student={"keepLayers": 3, "importanceMetric": "block-influence"},
                        output={"cacheUri": f"file://{cache}"})
    honest = run(job, progress=quiet())
    entry = next(cache.glob("layer-ranking-*.json"))
    doc = json.loads(entry.read_text())
    doc["entries"]["scores"] = doc["entries"]["scores"][:-1]  # one layer short
    entry.write_text(json.dumps(doc))
    again, _ = digits_job("b", distillation={"epochs": 0}, student={"keepLayers": 3, "importanceMetric": "block-influence"},
                          output={"cacheUri": f"file://{cache}"})
    rerun = run(again, progress=quiet())
    assert "ignoring entry 'scores' of the layer ranking" in capsys.readouterr().err
    assert rerun.layers_kept == honest.layers_kept and rerun.layer_scores == honest.layer_scores
    assert len(json.loads(entry.read_text())["entries"]["scores"]) == 6, "measured again and rewritten"


def test_keeping_every_layer_stores_no_ranking_for_the_next_job_to_reject(digits_job, tmp_path, capsys):
    """With every layer kept nothing is measured; an empty path stored then read back as
    'malformed' by the next job (found in the forgetting benchmark's continued students)."""
    cache = tmp_path / "shared"
    for name in ("a", "b"):
        job, _ = digits_job(name, distillation={"epochs": 0}, student={"keepLayers": 6, "importanceMetric": "ablation"},
                            output={"cacheUri": f"file://{cache}"})
        assert len(run(job, progress=quiet()).layers_kept) == 6
    assert "malformed" not in capsys.readouterr().err
    assert all("ablation" not in json.loads(entry.read_text())["entries"] for entry in cache.glob("layer-ranking-*.json"))
