"""The DistillationSearch CRD as the real API server applies it: what it refuses at apply time
(schema and CEL), with a message naming the field, and a valid search stored with its defaults."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.test_crd_validation import (
    apply,  # one way to apply a document, for every CRD test
)

MINIMAL_SEARCH = {
    "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch", "metadata": {"name": "s"},
    "spec": {"template": {"teacher": {"uri": "s3://b/t"}, "dataset": {"trainUri": "s3://b/a", "evalUri": "s3://b/b"},
                          "output": {"uri": "s3://b/o"}},
             "space": {"keepLayers": {"min": 2, "max": 4}, "int8": [False, True]},
             "budget": {"maxTrials": 4, "parallelTrials": 2}},
}  # fmt: skip


def search_with(change: Callable[[dict], None]) -> dict:
    doc = copy.deepcopy(MINIMAL_SEARCH)
    change(doc["spec"])
    return doc


@pytest.mark.parametrize(
    "change, expected",
    [
        pytest.param(lambda s: s["space"].update(keepRatio={"min": 0.25, "max": 0.75, "step": 0.25}),
                     ["spec.space", "set keepLayers or keepRatio, not both"], id="keepLayers-and-keepRatio"),
        pytest.param(lambda s: s["space"].update(keepLayers={"min": 5, "max": 3}),
                     ["spec.space.keepLayers", "min must not exceed max"], id="keepLayers-min-above-max"),
        pytest.param(lambda s: s.update(space={"keepRatio": {"min": 0.9, "max": 0.5, "step": 0.1}}),
                     ["spec.space.keepRatio", "min must not exceed max"], id="keepRatio-min-above-max"),
        pytest.param(lambda s: s["budget"].update(maxTrials=0),
                     ["spec.budget.maxTrials", "should be greater than or equal to 1"], id="maxTrials-0"),
        pytest.param(lambda s: s["budget"].update(parallelTrials=0),
                     ["spec.budget.parallelTrials", "should be greater than or equal to 1"], id="parallelTrials-0"),
        pytest.param(lambda s: s.pop("budget"), ["spec.budget", "Required value"], id="no-budget"),
        pytest.param(lambda s: s.update(algorithm="annealing"),
                     ["spec.algorithm", 'Unsupported value: "annealing"'], id="unknown-algorithm"),
        pytest.param(lambda s: s.update(objectives=["accuracy", "speed"]),
                     ["spec.objectives[1]", 'Unsupported value: "speed"'], id="unknown-objective"),
        pytest.param(lambda s: s["template"].update(student={"keepLayers": 0}),
                     ["spec.template.student.keepLayers"], id="template-checked-like-a-job"),
    ],
)
def test_invalid_search_is_refused_naming_the_field(control_plane: Cluster, namespace: str,
                                                    change: Callable[[dict], None], expected: list[str]):
    result = apply(control_plane, namespace, search_with(change), check=False)

    assert result.returncode != 0, result.stdout
    assert "is invalid" in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "No resources found" in control_plane.kubectl("get", "dsearch", "-n", namespace).stderr


def test_valid_search_is_stored_with_defaults_and_printed(control_plane: Cluster, namespace: str):
    apply(control_plane, namespace, MINIMAL_SEARCH)

    stored = json.loads(control_plane.kubectl("get", "distillationsearch", "s", "-n", namespace, "-o", "json").stdout)
    spec = stored["spec"]
    assert spec["algorithm"] == "auto" and spec["seed"] == 0 and spec["learnFromRegistry"] is True
    assert spec["objectives"] == ["accuracy", "latency"] and spec["stop"] is False
    assert spec["template"]["distillation"]["temperature"] == 2.0  # the job schema's defaults apply to the template
    header = control_plane.kubectl("get", "dsearch", "-n", namespace).stdout.splitlines()[0]
    assert header.split() == ["NAME", "PHASE", "TRIALS", "FRONTIER", "BEST", "AGE"]
