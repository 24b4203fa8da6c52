from distillery.controller.registry import frontier_statuses


def model(name, acc, lat, size):
    return {"metadata": {"name": name, "labels": {"distillery.io/frontier-group": "g"}, "generation": 1},
            "spec": {"metrics": {"accuracy": acc, "latencyP50Ms": lat, "sizeBytes": size}}}


def test_frontier_statuses():
    s = frontier_statuses([model("a", 0.9, 10, 100), model("b", 0.8, 20, 100), model("c", 0.95, 30, 300)])
    assert s["a"]["onFrontier"] and s["c"]["onFrontier"]
    assert s["b"] == {"onFrontier": False, "dominatedBy": ["a"], "group": "g", "observedGeneration": 1}
