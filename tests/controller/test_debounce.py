import threading
import time

from distillery.controller.debounce import Debouncer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def keys_of(runs):
    return lambda key, data: runs.append(key)


def test_a_burst_of_one_key_runs_once_after_the_window_with_the_newest_snapshot():
    clock, runs = Clock(), []
    d = Debouncer(lambda key, data: runs.append((key, data)), window_s=1.0, clock=clock)
    for i in range(50):
        d.schedule(("ns", "g1"), [f"snapshot-{i}"])
        clock.now += 0.01
    assert d.run_due() == [] and runs == []  # the window is not over yet
    clock.now = 101.0
    assert d.run_due() == [("ns", "g1")]
    assert runs == [(("ns", "g1"), ["snapshot-49"])] and d.pending() == {}


def test_keys_are_independent_and_the_window_starts_at_the_first_request():
    clock, runs = Clock(), []
    d = Debouncer(keys_of(runs), window_s=1.0, clock=clock)
    d.schedule("a")
    clock.now += 0.6
    d.schedule("b")
    d.schedule("a")  # joins the waiting run; does not push it back
    clock.now += 0.5
    assert d.run_due() == ["a"]
    clock.now += 0.5
    assert d.run_due() == ["b"]
    assert runs == ["a", "b"]


def test_a_request_during_a_run_is_served_by_another_run():
    clock, runs = Clock(), []

    def fn(key, data):
        runs.append(key)
        if len(runs) == 1:
            d.schedule(key)  # an event that arrived while the group was being written

    d = Debouncer(fn, window_s=1.0, clock=clock)
    d.schedule("g")
    clock.now += 1
    d.run_due()
    assert d.pending() == {"g": clock.now + 1.0}
    clock.now += 1
    d.run_due()
    assert runs == ["g", "g"]


def test_a_failing_run_is_retried_later_and_does_not_stop_others():
    clock, runs = Clock(), []

    def fn(key, data):
        runs.append(key)
        if key == "bad" and runs.count("bad") == 1:
            raise RuntimeError("API down")

    d = Debouncer(fn, window_s=0.5, retry_s=5.0, clock=clock)
    d.schedule("bad")
    d.schedule("good")
    clock.now += 0.5
    assert sorted(d.run_due()) == ["bad", "good"]
    assert d.pending() == {"bad": clock.now + 5.0}
    clock.now += 5.0
    d.run_due()
    assert runs.count("bad") == 2 and runs.count("good") == 1


def test_the_thread_coalesces_a_burst_and_stops():
    runs, done = [], threading.Event()

    def fn(key, data):
        runs.append(key)
        done.set()

    d = Debouncer(fn, window_s=0.2).start("test-debouncer")
    for _ in range(200):
        d.schedule("g")
    assert done.wait(5)
    time.sleep(0.3)
    assert runs == ["g"]
    d.stop()
    d._thread.join(5)
    assert not d._thread.is_alive()
