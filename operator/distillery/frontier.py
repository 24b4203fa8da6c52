"""Pareto frontier over students: lower latency, higher accuracy, smaller size are better."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    name: str
    accuracy: float
    latency_ms: float
    size_bytes: int


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
