"""Pareto frontier over students: lower latency, higher accuracy, smaller size are better.

The one place the dominance rule lives: the registry's frontier statuses and the verdict's
`mustImproveFrontier` check (through registry.candidate_dominators) both come here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    name: str
    accuracy: float
    latency_ms: float
    size_bytes: int


def point_from_metrics(name: str, metrics: Mapping) -> Point:
    """A point from ModelMetrics as stored (camelCase); a missing number counts as the worst."""
    return Point(name=name, accuracy=float(metrics.get("accuracy") or 0.0),
                 latency_ms=float(metrics.get("latencyP50Ms") or float("inf")),
                 size_bytes=int(metrics.get("sizeBytes") or 0))


def dominates(a: Point, b: Point) -> bool:
    """a dominates b: at least as good on every objective and strictly better on one."""
    at_least = (
        a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms and a.size_bytes <= b.size_bytes
    )
    strictly = a.accuracy > b.accuracy or a.latency_ms < b.latency_ms or a.size_bytes < b.size_bytes
    return at_least and strictly


def dominators(point: Point, others: list[Point]) -> list[str]:
    """Names of the points that dominate `point` (itself excluded)."""
    return sorted(o.name for o in others if o.name != point.name and dominates(o, point))


def frontier(points: list[Point]) -> Mapping[str, list[str]]:
    """For every point, who dominates it; an empty list means it is on the frontier."""
    return {p.name: dominators(p, points) for p in points}
