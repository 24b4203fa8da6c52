"""Status builders: conditions keep their transition time and carry the generation."""

from distillery.api.job import DistillationJobStatus
from distillery.controller import status as st


def test_transition_time_moves_only_when_the_status_changes():
    first = st.condition("Succeeded", None, "Running", "", 1, None, now="t1").to_wire()
    same = st.condition("Succeeded", None, "Running", "still", 1, [first], now="t2").to_wire()
    changed = st.condition("Succeeded", True, "Completed", "", 1, [same], now="t3").to_wire()
    assert same["lastTransitionTime"] == "t1"
    assert changed["lastTransitionTime"] == "t3" and changed["status"] == "True"


def test_failed_sets_every_condition_for_the_generation():
    s = st.failed(4, "DeadlineExceeded", "too slow", None).to_wire()
    by = {c["type"]: c for c in s["conditions"]}
    assert s["phase"] == "Failed" and s["observedGeneration"] == 4
    assert by["Succeeded"]["status"] == "False" and by["Succeeded"]["reason"] == "DeadlineExceeded"
    assert by["Stalled"]["status"] == "True"
    assert all(c["observedGeneration"] == 4 for c in s["conditions"])


def test_a_patch_is_the_typed_status_on_the_wire_plus_what_it_clears():
    patch = st.started(2, "distill-a-g2", None, queued=False)
    wire = patch.to_wire()
    # What an earlier generation's end wrote goes (null in a merge patch removes a field).
    assert wire["completionTime"] is None and wire["decision"] is None and wire["studentModel"] is None
    assert wire["phase"] == "Pending" and wire["trainerJob"] == "distill-a-g2"
    # Inside progress too: an earlier run's epoch or ranks would stay beside the new stage.
    assert wire["progress"]["epoch"] is None and wire["progress"]["ranks"] is None
    # Everything else round-trips through the API model: nothing hand-built slips past it.
    kept = without_nulls(wire)
    assert DistillationJobStatus.model_validate(kept).to_wire() == kept


def without_nulls(wire: dict) -> dict:
    """A merge patch as the API server keeps it (null removes a field, in nested objects too)."""
    return {k: without_nulls(v) if isinstance(v, dict) else v for k, v in wire.items() if v is not None}


def test_waiting_is_pending_not_failed():
    wire = st.waiting(1, "SecretMissing", "Secret 'x' not found", None).to_wire()
    assert wire["phase"] == "Pending" and wire["trainerJob"] is None
    succeeded = next(c for c in wire["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "Unknown" and succeeded["reason"] == "SecretMissing"
