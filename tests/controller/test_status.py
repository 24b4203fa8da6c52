"""Status builders: conditions keep their transition time and carry the generation."""

from distillery.controller import status as st


def test_transition_time_moves_only_when_the_status_changes():
    first = st.condition("Succeeded", None, "Running", "", 1, None, now="t1")
    same = st.condition("Succeeded", None, "Running", "still", 1, [first], now="t2")
    changed = st.condition("Succeeded", True, "Completed", "", 1, [same], now="t3")
    assert same["lastTransitionTime"] == "t1"
    assert changed["lastTransitionTime"] == "t3" and changed["status"] == "True"


def test_failed_sets_every_condition_for_the_generation():
    s = st.failed(4, "DeadlineExceeded", "too slow", None)
    by = {c["type"]: c for c in s["conditions"]}
    assert s["phase"] == "Failed" and s["observedGeneration"] == 4
    assert by["Succeeded"]["status"] == "False" and by["Succeeded"]["reason"] == "DeadlineExceeded"
    assert by["Stalled"]["status"] == "True"
    assert all(c["observedGeneration"] == 4 for c in s["conditions"])
