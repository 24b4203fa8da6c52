"""Store reads off the handlers: one in flight per job, a hanging store holds only its own job."""

import threading

from distillery.controller.store_io import StoreIO


def test_a_hanging_job_does_not_block_others_and_is_not_submitted_twice():
    io, release, opened = StoreIO(max_workers=2), threading.Event(), []

    def hang(store):
        release.wait(10)
        return "late"

    def opener(name):
        def open_():
            opened.append(name)
            return name
        return open_

    hung = io.submit(("bad", 1), "progress", opener("bad"), hang)
    assert hung is not None
    # In flight: neither another progress read nor a result read of that job starts.
    assert io.submit(("bad", 1), "progress", opener("bad"), hang) is None
    assert io.submit(("bad", 1), "result", opener("bad"), hang) is None
    # Another job reads meanwhile, on the other thread.
    ok = io.submit(("good", 1), "result", opener("good"), lambda store: {"from": store})
    assert ok.result(5) is None and io.latest(("good", 1), "result").value == {"from": "good"}
    assert io.latest(("bad", 1), "progress") is None and io.in_flight(("bad", 1))
    release.set()
    hung.result(5)
    assert io.latest(("bad", 1), "progress").value == "late" and not io.in_flight(("bad", 1))
    io.shutdown()


def test_failures_are_counted_until_a_read_succeeds_and_the_store_is_opened_once():
    io, opened, outcomes = StoreIO(max_workers=1), [], iter([OSError("down"), OSError("down"), {"ok": 1}])

    def read(store):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def open_():
        opened.append(1)
        return "store"

    for failures in (1, 2):
        io.submit(("j", 1), "result", open_, read).result(5)
        assert io.latest(("j", 1), "result").failures == failures
        assert io.latest(("j", 1), "result").error == "down"
    io.submit(("j", 1), "result", open_, read).result(5)
    last = io.latest(("j", 1), "result")
    assert last.ok and last.value == {"ok": 1} and last.failures == 0
    assert opened == [1] and io.held() == 1  # one Secret GET and one client per job generation
    io.forget(lambda job: job[0] == "j")
    assert io.held() == 0 and io.latest(("j", 1), "result") is None
    io.shutdown()
