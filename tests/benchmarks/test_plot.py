"""The Pareto plot and `distillery frontier`: what is drawn, not how it looks."""

from __future__ import annotations

import json

import pytest

from distillery.api.job import Decision, Hardware, ModelMetrics, Task, Variant
from distillery.api.result import TrainerResult
from distillery.api.student import StudentModel
from distillery.cli import main
from distillery.plot import (
    frontier_plot,
    plot_data,
    points_from_results,
    points_from_student_models,
)

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The teacher is the most accurate and slowest; "fast" is faster than "slow" and as accurate,
# and no larger, so "slow" is dominated.
POINTS = [
    ("teacher", 0.97, 100.0, 90_000_000, True),
    ("fast", 0.95, 30.0, 40_000_000, False),
    ("slow", 0.94, 60.0, 60_000_000, False),
]


def test_plot_writes_a_png_and_marks_the_dominated_point(tmp_path):
    out = tmp_path / "pareto.png"
    data = frontier_plot(POINTS, out, "three points")
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert data.dominated == ["slow"]
    assert data.dominated_by["slow"] == ["fast"]
    assert set(data.on_frontier) == {"teacher", "fast"}
    # What matplotlib was given: the dominated marker in its own series, the frontier line
    # through the undominated points in latency order.
    assert data.series["dominated"].names == ["slow"]
    assert (data.series["dominated"].x, data.series["dominated"].y) == ([60.0], [0.94])
    assert data.series["frontier"].names == ["fast"]
    assert data.series["teacher"].names == ["teacher"]
    assert data.frontier_line == ([30.0, 100.0], [0.95, 0.97])
    # Marker area grows with size.
    assert data.series["frontier"].area[0] < data.series["dominated"].area[0] < data.series["teacher"].area[0]


def test_points_without_accuracy_or_latency_are_left_out_and_names_made_unique():
    data = plot_data([("a", 0.9, 10.0, 1, False), ("a", 0.8, 20.0, 1, False), ("b", None, 5.0, 1, False)])
    assert data.dominated_by == {"a": [], "a (2)": ["a"]}


def _result(job: str, acc: float, lat: float, size: int, int8: tuple | None = None) -> dict:
    teacher = ModelMetrics(accuracy=0.96, metric_name="accuracy", latency_p50_ms=100.0, latency_p95_ms=110.0,
                           parameters=22_000_000, size_bytes=90_000_000, num_layers=6)
    student = ModelMetrics(accuracy=acc, metric_name="accuracy", latency_p50_ms=lat, latency_p95_ms=lat * 1.1,
                           parameters=size // 4, size_bytes=size, num_layers=3)
    variants = [Variant(name="fp32", metrics=student, accepted=True)]
    if int8 is not None:
        variants.append(Variant(name="int8", accepted=True, metrics=ModelMetrics(
            accuracy=int8[0], metric_name="accuracy", latency_p50_ms=int8[1], parameters=size // 4,
            size_bytes=size // 4, num_layers=3)))
    result = TrainerResult(
        job=job, task=Task.SEQUENCE_CLASSIFICATION, hardware=Hardware.CPU, fingerprint="f" * 16,
        spec_hash="s" * 16, teacher_uri="file:///models/teacher", teacher=teacher, student=student,
        variants=variants, teacher_layers=6, layers_kept=[0, 2, 5], speedup=100.0 / lat,
        accuracy_retention=acc / 0.96, compression_ratio=1.3, pareto_score=(100.0 / lat) * (acc / 0.96),
        decision=Decision(accepted=True, reasons=["made up"]), artifacts={"uri": f"file:///runs/{job}/"},
        start_time="2026-01-01T00:00:00+00:00", completion_time="2026-01-01T00:10:00+00:00",
    )
    return result.to_wire()


def test_points_from_results_has_teacher_students_and_int8():
    docs = [_result("a", 0.95, 50.0, 60_000_000, int8=(0.94, 25.0)), _result("b", 0.93, 40.0, 50_000_000)]
    points = points_from_results(docs)
    assert points[0] == ("teacher", 0.96, 100.0, 90_000_000, True)
    assert [p[0] for p in points[1:]] == ["a", "a int8", "b"]
    assert points[2] == ("a int8", 0.94, 25.0, 15_000_000, False)


def test_frontier_command_writes_the_png(tmp_path, capsys):
    files = []
    for doc in (_result("three-layers", 0.95, 50.0, 60_000_000, int8=(0.95, 20.0)),
                _result("two-layers", 0.90, 60.0, 70_000_000)):
        path = tmp_path / f"{doc['job']}.json"
        path.write_text(json.dumps(doc))
        files.append(str(path))
    out = tmp_path / "frontier.png"
    assert main(["frontier", *files, "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    printed = capsys.readouterr().out
    assert "two-layers" in printed and "dominated by" in printed
    line = next(x for x in printed.splitlines() if x.startswith("two-layers"))
    assert "three-layers" in line  # dominated by the faster, more accurate, smaller student


def test_frontier_command_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"job": "x"}))
    assert main(["frontier", str(bad), "--out", str(tmp_path / "f.png")]) == 2
    assert "not a TrainerResult" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_points_from_student_models():
    metrics = ModelMetrics(accuracy=0.9, latency_p50_ms=20.0, size_bytes=10)
    teacher = ModelMetrics(accuracy=0.95, latency_p50_ms=80.0, size_bytes=40)
    items = []
    for name in ("sm-a", "sm-b"):
        sm = StudentModel.model_validate({
            "metadata": {"name": name},
            "spec": {"teacher": {"uri": "s3://m/t", "task": "sequence-classification"},
                     "artifacts": {"uri": "s3://m/out/"}, "metrics": metrics.to_wire(),
                     "teacherMetrics": teacher.to_wire()},
        })
        items.append(sm.to_wire())
    points = points_from_student_models(items)
    assert points == [("teacher", 0.95, 80.0, 40, True), ("sm-a", 0.9, 20.0, 10, False),
                      ("sm-b", 0.9, 20.0, 10, False)]
