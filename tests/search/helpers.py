"""A DistillationSearch spec for the search tests, built like a user writes one (camelCase)."""

from __future__ import annotations

from distillery.api.search import DistillationSearchSpec

TEMPLATE = {
    "teacher": {"uri": "/models/teacher", "format": "torch", "task": "tabular-classification"},
    "dataset": {"format": "npz", "trainUri": "/data/train.npz", "evalUri": "/data/eval.npz"},
    "student": {"method": "importance", "keepLayers": 2},
    "distillation": {"epochs": 4, "temperature": 4.0},
    "targets": {"minAccuracy": 0.8},
    "output": {"uri": "/out/search"},
}


def search_spec(space: dict, **more) -> DistillationSearchSpec:
    doc = {"template": TEMPLATE, "space": space, "budget": {"maxTrials": 8}, **more}
    return DistillationSearchSpec.model_validate(doc)
