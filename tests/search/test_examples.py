"""The shipped search files load as users run them: valid, and their relative paths resolved
inside their own example folder (where that example's prepare step writes the teacher and data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillery.api.load import load_search_file
from distillery.search.local import resolve_search_paths
from distillery.search.space import grid_size

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEARCHES = sorted(EXAMPLES.glob("*/search.yaml"))


def test_both_example_searches_are_found():
    assert [p.parent.name for p in SEARCHES] == ["causal-lm", "search"]


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.parent.name)
def test_an_example_search_loads_and_points_into_its_folder(path):
    search = resolve_search_paths(load_search_file(path), path.parent)
    template = search.spec.template
    for uri in (template.teacher.uri, template.dataset.train_uri, template.dataset.eval_uri, template.output.uri):
        local = Path(uri.removeprefix("file://"))
        assert local.is_absolute() and local.is_relative_to(path.parent.parent), uri
    assert grid_size(search.spec.space) >= search.spec.budget.max_trials >= 1  # every trial a distinct point
