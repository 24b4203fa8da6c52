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
