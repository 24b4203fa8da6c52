from distillery.frontier import Point, dominates, frontier


def test_dominance_needs_at_least_as_good_everywhere_and_better_somewhere():
    a = Point("a", accuracy=0.9, latency_ms=10, size_bytes=100)
    b = Point("b", accuracy=0.8, latency_ms=20, size_bytes=100)
    same = Point("same", accuracy=0.9, latency_ms=10, size_bytes=100)
    assert dominates(a, b) and not dominates(b, a)
    assert not dominates(a, same) and not dominates(same, a)


def test_frontier_of_three_with_one_dominated():
    points = [
        Point("fast", accuracy=0.80, latency_ms=5, size_bytes=50),
        Point("accurate", accuracy=0.95, latency_ms=20, size_bytes=200),
        Point("worse", accuracy=0.79, latency_ms=25, size_bytes=250),
    ]
    f = frontier(points)
    assert f["fast"] == [] and f["accurate"] == []
    assert f["worse"] == ["accurate", "fast"]
