"""The lease on an S3 output (output_lease.py), on a real MinIO: a second live run is refused,
a dead run's lease is taken over once it expires, a retried pod of the same generation takes its
own lease at once, and a run whose lease was taken over stops writing."""

from __future__ import annotations

import threading
import time

import pytest

from distillery.api import load_job
from distillery.store import open_store
from distillery_trainer import output_lease
from distillery_trainer.errors import InputError
from distillery_trainer.output_dir import LOCK, open_output
from distillery_trainer.output_lease import LeaseState

pytestmark = pytest.mark.minio


@pytest.fixture
def fast_lease(monkeypatch):
    """Seconds instead of minutes: a 3 s lease renewed every 0.5 s, looked at every 0.2 s."""
    monkeypatch.setattr(output_lease, "LEASE_S", 3.0)
    monkeypatch.setattr(output_lease, "RENEW_S", 0.5)
    monkeypatch.setattr(output_lease, "POLL_S", 0.2)


@pytest.fixture
def out(s3_env):
    return f"s3://{s3_env}/runs/out"


def job_with_output(uri: str):
    return load_job({"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "o"},
                     "spec": {"teacher": {"uri": "/t"}, "dataset": {"trainUri": "/a", "evalUri": "/b"},
                              "output": {"uri": uri}}})


def test_a_second_live_run_is_refused_and_the_lease_goes_at_the_end(out, fast_lease, capsys):
    first = open_output(job_with_output(out))
    raw = open_store(out)
    assert LeaseState.decode(raw.read_bytes(LOCK)).expires > time.time()
    started = time.monotonic()
    with pytest.raises(InputError, match="in use by another run"):
        output_lease.acquire(raw, LOCK, out, holder="someone else")
    assert time.monotonic() - started < 3.0  # the renewal gave the holder away before the lease ran out
    assert "waiting to see whether that run is alive" in capsys.readouterr().err
    first.write_text("progress.json", "{}")  # the holder goes on undisturbed
    first.close()
    assert not raw.exists(LOCK)
    with open_output(job_with_output(out)) as again:  # free again
        again.write_text("progress.json", "{}")


def test_a_dead_runs_lease_is_taken_over_once_it_expires(out, fast_lease):
    raw = open_store(out)
    raw.write_bytes(LOCK, LeaseState("killed:1", time.time() + 1.5).encode())  # never renewed
    started = time.monotonic()
    with open_output(job_with_output(out)) as store:
        waited = time.monotonic() - started
        store.write_text("progress.json", "{}")
    assert 1.0 < waited < 3.0


def test_a_retried_pod_of_the_same_generation_takes_its_own_lease_at_once(out, fast_lease, monkeypatch):
    holder = "ns/job generation 1"
    raw = open_store(out)
    raw.write_bytes(LOCK, LeaseState(holder, time.time() + 3600).encode())  # the killed pod's
    monkeypatch.setenv("DISTILLERY_OUTPUT_HOLDER", holder)
    started = time.monotonic()
    with open_output(job_with_output(out)) as store:
        assert time.monotonic() - started < 1.0
        store.write_text("progress.json", "{}")


def test_a_run_whose_lease_was_taken_over_stops_writing(out, fast_lease):
    store = open_output(job_with_output(out))
    raw = open_store(out)
    raw.write_bytes(LOCK, LeaseState("usurper", time.time() + 3600).encode())  # as after an expiry
    deadline = time.monotonic() + 5
    while not store._lease.lost and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(InputError, match="taken over by another run"):
        store.write_text("result.json", "{}")
    store.close()
    assert LeaseState.decode(raw.read_bytes(LOCK)).holder == "usurper"  # not deleted by the loser


def test_two_newcomers_racing_for_an_expired_lease_get_it_once(out, fast_lease):
    raw = open_store(out)
    raw.write_bytes(LOCK, LeaseState("dead", time.time() - 1).encode())
    results: dict[str, object] = {}

    def take(name):
        try:
            results[name] = output_lease.acquire(open_store(out), LOCK, out, holder=name)
        except InputError as err:
            results[name] = err

    threads = [threading.Thread(target=take, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    leases = [r for r in results.values() if isinstance(r, output_lease.Lease)]
    assert len(leases) == 1 and sum(isinstance(r, InputError) for r in results.values()) == 1
    leases[0].release()
