"""The operator's gauges: jobs and their training processes by phase."""

from prometheus_client import REGISTRY

from distillery.controller import metrics


def gauge(name: str, phase: str) -> float:
    return REGISTRY.get_sample_value(name, {"phase": phase}) or 0.0


def test_training_processes_follow_each_jobs_world_size_and_phase():
    before = gauge("distillery_training_processes", "Running")
    metrics.set_phase("ns/pair", "Pending", 4)  # the world size arrives with the started status
    metrics.set_phase("ns/pair", "Running")  # later patches do not repeat it
    metrics.set_phase("ns/one", "Running")  # never said: one process
    assert gauge("distillery_training_processes", "Running") == before + 5
    metrics.set_phase("ns/pair", None)
    metrics.set_phase("ns/one", None)
    assert gauge("distillery_training_processes", "Running") == before


def spread(name: str) -> float | None:
    return REGISTRY.get_sample_value("distillery_rank_progress_spread_percent", {"namespace": "ns", "name": name})


def test_rank_spread_is_one_series_per_running_distributed_job_removed_when_it_ends():
    apart = {"stage": "selecting-layers", "percent": 17.5,
             "ranks": [{"rank": 0, "stage": "selecting-layers", "percent": 17.5},
                       {"rank": 3, "stage": "waiting", "percent": 5.0}]}
    metrics.set_phase("ns/wide", "Pending", 4)
    assert spread("wide") is None
    metrics.set_phase("ns/wide", "Running", None, apart)
    assert spread("wide") == 12.5
    metrics.set_phase("ns/wide", "Running", None, {"stage": "training", "percent": 30.0, "ranks": None})
    assert spread("wide") == 0.0  # together: the trainer lists no ranks
    metrics.set_phase("ns/wide", "Succeeded", None, {"stage": "done", "percent": 100.0})
    assert spread("wide") is None
    metrics.set_phase("ns/again", "Pending", 2)
    metrics.set_phase("ns/again", "Running", None, apart)
    metrics.set_phase("ns/again", None)  # deleted while running
    assert spread("again") is None
    metrics.set_phase("ns/single", "Running", None, {"stage": "training", "percent": 30.0})
    assert spread("single") is None  # one process has no spread
    metrics.set_phase("ns/single", None)
    metrics.set_phase("ns/wide", None)
