"""`distillery search` for real: a small search on the digits MLP (tests/digits.py), trials run
by the trainer one after another, checked against the trials' own result.json files."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from distillery.api.result import TrainerResult
from distillery.api.search import DistillationSearchStatus, Objective, SearchTrial, TrialParams
from distillery.cli import main
from distillery.search.trials import frontier_of
from tests.digits import digits_job_document

SPACE = {"keepLayers": {"min": 1, "max": 2}, "int8": [False, True]}  # 4 points: a grid


def write_search(path: Path, ws: Path, out: Path, *, space=None, targets=None, max_trials=4) -> Path:
    template = digits_job_document(ws, out)["spec"]
    # One epoch, no step checkpoints, the cheap importance metric: a trial takes seconds.
    template["distillation"]["epochs"] = 1
    template["distillation"].pop("checkpointEverySteps")
    template["student"]["importanceMetric"] = "block-influence"
    doc = {"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch", "metadata": {"name": "digits"},
           "spec": {"template": template, "space": space or SPACE,
                    "targets": targets or {"minAccuracy": 0.8}, "objectives": ["accuracy", "latency"],
                    "optimizeFor": "latency", "budget": {"maxTrials": max_trials}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def results_of(out: Path) -> dict[str, TrainerResult]:
    return {p.parent.name: TrainerResult.model_validate_json(p.read_text())
            for p in sorted((out / "trials").glob("*/result.json"))}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared, loaded machine: one torch thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workspace(one_thread, request):
    # Asked for here, after one_thread, so the teacher is trained on one thread as well.
    return request.getfixturevalue("digits_workspace")


@pytest.fixture(scope="module")
def searched(workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    path = write_search(root / "search.yaml", workspace, root / "out")
    return path, root / "out"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["search", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_runs_every_trial_and_reports_frontier_and_best(searched, capsys):
    path, out = searched
    code, stdout, stderr = run_cli(capsys, path)
    assert code == 0, stderr
    status = DistillationSearchStatus.model_validate_json((out / "search.json").read_text())
    assert status.algorithm == "grid" and status.phase == "Succeeded"
    assert [t.name for t in status.trials] == [f"digits-t{i:03d}" for i in range(4)]
    assert [(t.params.keep_layers, t.params.int8) for t in status.trials] == [(1, False), (1, True), (2, False),
                                                                              (2, True)]
    results = results_of(out)
    assert sorted(results) == [t.name for t in status.trials]
    # Each row is its trial's own result: the chosen variant's numbers and verdict.
    for t in status.trials:
        r = results[t.name]
        assert (t.accuracy, t.latency_ms, t.size_bytes) == (r.student.accuracy, r.student.latency_p50_ms,
                                                            r.student.size_bytes)
        assert t.accepted == r.decision.accepted and t.variant == r.variant
        assert r.layers_kept and len(r.layers_kept) == t.params.keep_layers
        assert any(v.name == "int8" for v in r.variants) == t.params.int8
    # The frontier recomputed from the result files alone.
    rows = [SearchTrial(name=n, index=i, params=TrialParams(), accuracy=r.student.accuracy,
                        latency_ms=r.student.latency_p50_ms) for i, (n, r) in enumerate(results.items())]
    assert status.frontier == frontier_of(rows, [Objective.ACCURACY, Objective.LATENCY])
    assert {t.name for t in status.trials if t.on_frontier} == set(status.frontier)
    # The best trial meets the target, and is the fastest of those that do (optimizeFor latency).
    best = results[status.best_trial]
    assert best.decision.accepted and best.student.accuracy >= 0.8
    accepted = [r for r in results.values() if r.decision.accepted]
    assert best.student.latency_p50_ms == min(r.student.latency_p50_ms for r in accepted)
    assert (out / "frontier.png").stat().st_size > 1000
    assert f">{status.best_trial}" in stdout.replace(" ", "").replace("*", "")
    assert stderr.count("[search] digits-t") == 4  # one line per finished trial
    assert stderr.count("[distillery] training") == 4
    assert len(list((out / "cache").iterdir())) > 0  # the trials share one teacher-output cache


def test_a_rerun_reuses_every_trial(searched, capsys):
    path, out = searched
    before = json.loads((out / "search.json").read_text())
    code, stdout, stderr = run_cli(capsys, path, "--json")
    assert code == 0, stderr
    assert "[distillery] training" not in stderr, "a finished trial must not be trained again"
    after = json.loads((out / "search.json").read_text())
    assert json.loads(stdout) == after
    for key in ("trials", "frontier", "bestTrial", "startTime"):
        assert after[key] == before[key], key


def test_a_search_continues_where_it_stopped(workspace, tmp_path, capsys):
    space = {"int8": [False, True]}
    path = write_search(tmp_path / "s.yaml", workspace, tmp_path / "out", space=space, max_trials=1)
    code, _, stderr = run_cli(capsys, path)
    assert code == 0 and stderr.count("[distillery] training") == 1
    first = json.loads((tmp_path / "out" / "search.json").read_text())["trials"]
    write_search(path, workspace, tmp_path / "out", space=space, max_trials=2)  # a larger budget
    code, _, stderr = run_cli(capsys, path)
    assert code == 0, stderr
    assert stderr.count("[distillery] training") == 1, "only the new trial is trained"
    status = json.loads((tmp_path / "out" / "search.json").read_text())
    kept = ("name", "params", "accuracy", "latencyMs", "sizeBytes")  # the trial run before, reused as it was
    assert {k: status["trials"][0][k] for k in kept} == {k: first[0][k] for k in kept}
    assert sorted(t["params"]["int8"] for t in status["trials"]) == [False, True]


def test_learning_from_a_previous_search_tries_its_frontier_first(searched, workspace, tmp_path, capsys):
    _, first_out = searched
    first = json.loads((first_out / "search.json").read_text())
    frontier_params = [t["params"] for t in first["trials"] if t["name"] in first["frontier"]]
    path = write_search(tmp_path / "s.yaml", workspace, tmp_path / "out", max_trials=len(frontier_params))
    code, _, stderr = run_cli(capsys, path, "--learn-from", first_out)
    assert code in (0, 3), stderr
    status = json.loads((tmp_path / "out" / "search.json").read_text())
    assert sorted(status["seededFrom"]) == sorted(first["frontier"])
    assert all(t["seeded"] for t in status["trials"])
    assert sorted(map(json.dumps, (t["params"] for t in status["trials"]))) == sorted(map(json.dumps, frontier_params))


def test_no_student_meets_an_impossible_target_exit_3(workspace, tmp_path, capsys):
    path = write_search(tmp_path / "s.yaml", workspace, tmp_path / "out", space={"int8": [True]},
                        targets={"minSpeedup": 1000}, max_trials=2)
    code, stdout, stderr = run_cli(capsys, path)
    assert code == 3, stderr
    status = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(status["trials"]) == 1  # the space has one point: the search ends before the budget
    assert "bestTrial" not in status and status["phase"] == "Failed"
    assert "speedup" in status["message"]


def test_a_space_the_teacher_cannot_satisfy_is_refused_before_any_trial(workspace, tmp_path, capsys):
    path = write_search(tmp_path / "s.yaml", workspace, tmp_path / "out",
                        space={"keepLayers": {"min": 2, "max": 9}})
    code, _, stderr = run_cli(capsys, path)
    assert code == 2
    assert "space.keepLayers.max 9 exceeds the teacher's 6 layers" in stderr
    assert not (tmp_path / "out" / "trials").exists()


def test_a_bad_search_file_names_the_field(workspace, tmp_path, capsys):
    path = write_search(tmp_path / "s.yaml", workspace, tmp_path / "out")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["budget"]["maxTrials"] = 0
    path.write_text(yaml.safe_dump(doc))
    code, _, stderr = run_cli(capsys, path)
    assert code == 2 and "spec.budget.maxTrials" in stderr


def test_an_output_holding_another_search_is_refused(workspace, tmp_path, capsys):
    path = write_search(tmp_path / "s.yaml", workspace, tmp_path / "out")
    (tmp_path / "out").mkdir()
    other = DistillationSearchStatus(trials=[SearchTrial(name="other-t000", index=0, params=TrialParams(int8=True))])
    (tmp_path / "out" / "search.json").write_text(json.dumps(other.to_wire()))
    code, _, stderr = run_cli(capsys, path)
    assert code == 2 and "template.output.uri" in stderr and "other-t000" in stderr
    assert not (tmp_path / "out" / "trials").exists()
