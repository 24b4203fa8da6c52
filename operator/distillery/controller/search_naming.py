"""Names, labels and annotations of a DistillationSearch's trials (its child DistillationJobs).

A trial's name and index are deterministic, so creating the same trial twice is a no-op (409), and
everything the search needs to know about a trial (its index, its parameters, whether a registry
seed chose them) is written on the trial itself, so the search's state is rebuilt from its trials.
"""

from __future__ import annotations

import hashlib
import json
import re

from distillery.api.base import GROUP
from distillery.api.search import TrialParams

LABEL_SEARCH = f"{GROUP}/search"
LABEL_TRIAL_INDEX = f"{GROUP}/trial-index"
ANNOTATION_PARAMS = f"{GROUP}/trial-params"
ANNOTATION_SEEDED = f"{GROUP}/trial-seeded"
# Which StudentModel's recipe a seeded trial tries (so status.seededFrom is rebuilt from the trials).
ANNOTATION_SEEDED_FROM = f"{GROUP}/trial-seeded-from"
# A digest of the search's template and space when the trial was made: a trial refused as invalid
# fails the search only while they are unchanged, so fixing the spec lets the search go on.
ANNOTATION_TEMPLATE_DIGEST = f"{GROUP}/trial-template-digest"
COMPONENT_TRIAL = "search-trial"
# The dry run that checks a search's space against its teacher before the first trial. Its own
# label, not LABEL_SEARCH: it is not a trial, and listing the trials must not find it.
LABEL_SPACE_CHECK = f"{GROUP}/space-check-of"
COMPONENT_SPACE_CHECK = "search-space-check"

# A label value holds at most 63 characters, and every trial carries its search's name as one.
MAX_SEARCH_NAME = 63


def trial_name(search_name: str, index: int) -> str:
    return f"{search_name}-t{index:03d}"


def space_check_name(search_name: str, digest: str) -> str:
    """One check per template and space: an edit of either gets a check of its own."""
    return f"{search_name}-check-{digest[:8]}"


def trial_selector(search_name: str) -> str:
    """The label selector of a search's trials."""
    return f"{LABEL_SEARCH}={search_name}"


def params_annotation(params: TrialParams) -> str:
    """TrialParams as compact camelCase JSON, unset fields left out, keys sorted (stable text)."""
    return json.dumps(params.to_wire(), sort_keys=True, separators=(",", ":"))


def params_from_annotation(text: str | None) -> TrialParams | None:
    """The params a trial was started with; None when the annotation is missing or not TrialParams."""
    if not text:
        return None
    try:
        return TrialParams.model_validate_json(text)
    except ValueError:
        return None


def index_from_label(value: str | None) -> int | None:
    if value is None or not re.fullmatch(r"[0-9]{1,6}", value):
        return None
    return int(value)


def template_digest(template: dict, space: dict) -> str:
    """A short stable digest of a search's template and space (wire form, keys sorted)."""
    text = json.dumps({"template": template, "space": space}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
