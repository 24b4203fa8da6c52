"""The Pareto picture: accuracy against latency (marker area ~ size), frontier highlighted.

Used by ``distillery frontier`` (result.json files or the StudentModels in a cluster) and by the
quality benchmark. What is drawn is computed first, as plain data (:func:`plot_data`), so it can
be checked without looking at pixels; matplotlib (Agg backend) is imported only to draw it, and
the ``kubernetes`` client only to read a cluster. Neither is needed to import this module.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.frontier import Point, frontier

# (name, accuracy, latency_ms, size_bytes, is_teacher)
PlotPoint = tuple[str, float, float, int | None, bool]

GROUP, VERSION, PLURAL = "distillery.io", "v1alpha1", "studentmodels"


@dataclass
class Series:
    """One set of markers as handed to matplotlib."""

    names: list[str] = field(default_factory=list)
    x: list[float] = field(default_factory=list)  # latency, ms
    y: list[float] = field(default_factory=list)  # accuracy
    area: list[float] = field(default_factory=list)  # marker area in points^2, ~ size


@dataclass
class PlotData:
    dominated_by: Mapping[str, list[str]]  # every point: who dominates it ([] = on the frontier)
    on_frontier: list[str]
    dominated: list[str]
    teachers: list[str]
    series: dict[str, Series]  # "frontier", "dominated", "teacher"
    frontier_line: tuple[list[float], list[float]]  # accuracy-latency frontier by latency: (x, y)
    log_x: bool


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _areas(sizes: list[float | None]) -> list[float]:
    """Marker areas from 40 to 400 pt^2, proportional to size between the smallest and largest."""
    known = [s for s in sizes if s is not None and math.isfinite(s)]
    if not known:
        return [80.0] * len(sizes)
    low, high = min(known), max(known)
    span = high - low
    return [80.0 if s is None or not math.isfinite(s) else
            (220.0 if span == 0 else 40.0 + 360.0 * (s - low) / span) for s in sizes]


def plot_data(points: Iterable[PlotPoint]) -> PlotData:
    """What the plot shows: every point placed, the frontier (by distillery.frontier) marked.

    Points without an accuracy or a latency cannot be placed and are left out. A missing size
    counts as the worst size when deciding dominance. Teachers take part in the frontier (a
    student the teacher beats on every objective is not worth deploying) and keep their own
    marker either way.
    """
    rows = [p for p in points if p[1] is not None and p[2] is not None]
    names = _unique(p[0] for p in rows)
    rows = [(n, float(a), float(lat), s, bool(t)) for n, (_, a, lat, s, t) in zip(names, rows, strict=True)]
    pts = [Point(n, a, lat, math.inf if s is None else s) for n, a, lat, s, _ in rows]
    dominated_by = frontier(pts)
    areas = dict(zip(names, _areas([None if s is None else float(s) for _, _, _, s, _ in rows]), strict=True))
    series = {"frontier": Series(), "dominated": Series(), "teacher": Series()}
    for name, acc, lat, _, is_teacher in rows:
        kind = "teacher" if is_teacher else ("dominated" if dominated_by[name] else "frontier")
        s = series[kind]
        s.names.append(name)
        s.x.append(lat)
        s.y.append(acc)
        s.area.append(areas[name])
    on = [n for n in names if not dominated_by[n]]
    # The line is the accuracy-latency frontier (size left out: a point can be on the frontier
    # only for being small, and a line through it would run backwards).
    flat = frontier([Point(n, a, lat, 0) for n, a, lat, _, _ in rows])
    line = sorted((lat, acc) for name, acc, lat, _, _ in rows if not flat[name])
    lats = [r[2] for r in rows if r[2] > 0]
    return PlotData(
        dominated_by=dominated_by, on_frontier=on, dominated=[n for n in names if dominated_by[n]],
        teachers=[r[0] for r in rows if r[4]], series=series,
        frontier_line=([x for x, _ in line], [y for _, y in line]),
        log_x=bool(lats) and max(lats) / min(lats) > 8,
    )


def _label_offsets(data: PlotData) -> dict[str, tuple[float, float]]:
    """Label offsets (points) that stack the labels of points lying close together."""
    placed = [(n, x, y) for s in data.series.values() for n, x, y in zip(s.names, s.x, s.y, strict=True)]
    if not placed:
        return {}
    xs = [math.log(x) if data.log_x and x > 0 else x for _, x, _ in placed]
    ys = [y for _, _, y in placed]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    out: dict[str, tuple[float, float]] = {}
    taken: list[tuple[float, float, int]] = []
    for (name, _, _), x, y in zip(placed, xs, ys, strict=True):
        nx, ny = (x - min(xs)) / span_x, (y - min(ys)) / span_y
        level = sum(1 for tx, ty, _ in taken if abs(tx - nx) < 0.12 and abs(ty - ny) < 0.04)
        taken.append((nx, ny, level))
        out[name] = (6.0, 4.0 - 9.0 * level)
    return out


def frontier_plot(points: Iterable[PlotPoint], path: str | Path, title: str = "Distillery: accuracy vs latency",
                  *, xlabel: str = "latency p50 (ms, onnxruntime)", ylabel: str = "accuracy") -> PlotData:
    """Draw accuracy against latency to a PNG at `path`; return what was drawn."""
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.figure import Figure

    data = plot_data(points)
    fig = Figure(figsize=(9, 6), dpi=120)
    ax = fig.subplots()
    if data.frontier_line[0]:
        ax.step(*data.frontier_line, where="post", color="tab:green", alpha=0.5, linewidth=1.5,
                label="Pareto frontier", zorder=1)
    styles = {
        "frontier": {"color": "tab:green", "edgecolor": "black", "label": "student on the frontier"},
        "dominated": {"facecolor": "none", "edgecolor": "tab:gray", "label": "dominated student"},
        "teacher": {"color": "tab:red", "marker": "*", "edgecolor": "black", "label": "teacher"},
    }
    offsets = _label_offsets(data)
    for kind, s in data.series.items():
        if not s.names:
            continue
        ax.scatter(s.x, s.y, s=[a * (2.0 if kind == "teacher" else 1.0) for a in s.area],
                   zorder=3, linewidths=1.0, **styles[kind])
        for name, x, y in zip(s.names, s.x, s.y, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=offsets[name], fontsize=7,
                        color="black" if kind != "dominated" else "dimgray")
    if data.log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, markerscale=0.6)
    ax.text(0.01, 0.01, "marker area ~ model size", transform=ax.transAxes, fontsize=7, color="dimgray")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return data


# ----------------------------------------------------------------------------- sources


def _get(obj: Any, camel: str, snake: str | None = None):
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(camel, obj.get(snake) if snake else None)
    return getattr(obj, snake or camel, None)


def _metric_point(name: str, metrics: Any, is_teacher: bool) -> PlotPoint | None:
    acc = _get(metrics, "accuracy")
    lat = _get(metrics, "latencyP50Ms", "latency_p50_ms")
    if acc is None or lat is None:
        return None
    return (name, float(acc), float(lat), _get(metrics, "sizeBytes", "size_bytes"), is_teacher)


def _teacher_points(teachers: dict[str, list]) -> list[PlotPoint]:
    """One point per teacher: its accuracy and size, the median of its measured latencies."""
    out = []
    for uri, metrics in teachers.items():
        placed = [m for m in (_metric_point(uri, m, True) for m in metrics) if m is not None]
        if not placed:
            continue
        name = "teacher" if len(teachers) == 1 else f"teacher {uri.rstrip('/').rsplit('/', 1)[-1]}"
        first = placed[0]
        out.append((name, first[1], statistics.median(p[2] for p in placed), first[3], True))
    return out


def points_from_results(results: Iterable[Any]) -> list[PlotPoint]:
    """Points from TrainerResult documents (result.json, camelCase) or TrainerResult objects:
    each variant of each student (fp32, int8), and one point per teacher."""
    points: list[PlotPoint] = []
    teachers: dict[str, list] = {}
    for result in results:
        job = _get(result, "job") or "student"
        variants = _get(result, "variants") or []
        listed = [("" if _get(v, "name") == "fp32" else f" {_get(v, 'name')}", _get(v, "metrics")) for v in variants]
        for suffix, metrics in listed or [("", _get(result, "student"))]:
            point = _metric_point(job + suffix, metrics, False) if metrics is not None else None
            if point is not None:
                points.append(point)
        uri = _get(result, "teacherUri", "teacher_uri") or "teacher"
        if _get(result, "teacher") is not None:
            teachers.setdefault(uri, []).append(_get(result, "teacher"))
    return _teacher_points(teachers) + points


def points_from_student_models(items: Iterable[Mapping]) -> list[PlotPoint]:
    """Points from StudentModel objects as the API server returns them (dicts, camelCase)."""
    points: list[PlotPoint] = []
    teachers: dict[str, list] = {}
    for item in items:
        spec = item.get("spec") or {}
        name = (item.get("metadata") or {}).get("name") or "student"
        point = _metric_point(name, spec.get("metrics"), False)
        if point is not None:
            points.append(point)
        if spec.get("teacherMetrics"):
            uri = (spec.get("teacher") or {}).get("uri") or "teacher"
            teachers.setdefault(uri, []).append(spec["teacherMetrics"])
    return _teacher_points(teachers) + points


def cluster_student_models(namespace: str | None = None) -> list[dict]:
    """The StudentModels in one namespace (or all), read with the kubernetes client."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    if namespace:
        body = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    else:
        body = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    return list(body.get("items", []))


def summary(data: PlotData, points: Iterable[PlotPoint]) -> str:
    """One line per point: accuracy, latency, size and its place on the frontier."""
    lines = []
    rows = [p for p in points if p[1] is not None and p[2] is not None]
    for name, (_, acc, lat, size, is_teacher) in zip(_unique(p[0] for p in rows), rows, strict=True):
        where = "frontier" if not data.dominated_by[name] else "dominated by " + ", ".join(data.dominated_by[name])
        mb = "-" if size is None else f"{size / 1e6:.1f} MB"
        lines.append(f"{name:<28} acc {acc:.4f}  p50 {lat:9.2f} ms  {mb:>9}  "
                     f"{'teacher  ' if is_teacher else ''}{where}")
    return "\n".join(lines)
