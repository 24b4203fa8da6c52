"""Reading the trainer's outcome from a pod, as the operator does for failed Jobs."""

from distillery.controller.kube import termination_message


def pod(terminated: dict) -> dict:
    return {"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}


def test_trainer_json_message():
    msg, reason = termination_message(pod({"exitCode": 2, "reason": "Error",
                                           "message": '{"ok":false,"reason":"InvalidInput","message":"teacher.uri: not found"}'}))
    assert msg == {"ok": False, "reason": "InvalidInput", "message": "teacher.uri: not found"}
    assert reason == "Error"


def test_oom_killed_is_recognised():
    msg, reason = termination_message(pod({"exitCode": 137, "reason": "OOMKilled"}))
    assert msg is None and reason == "OOMKilled"


def test_plain_log_tail_when_the_trainer_wrote_no_json():
    msg, _ = termination_message(pod({"exitCode": 1, "reason": "Error", "message": "Traceback...\nRuntimeError: boom\n"}))
    assert msg["ok"] is False and msg["message"].endswith("RuntimeError: boom")


def test_no_terminated_container():
    assert termination_message({"status": {"containerStatuses": [{"state": {"running": {}}}]}}) == (None, None)
