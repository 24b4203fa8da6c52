"""Reading a DistillationJob document and turning validation errors into one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distillery.api.job import DistillationJob


class SpecError(ValueError):
    """The job document is invalid; the message names the field and what is wrong."""


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def describe_validation_error(err: ValidationError) -> str:
    """All problems of a pydantic error, each as `field: what is wrong`, on one line."""
    problems = []
    for e in err.errors():
        # Drop pydantic's internal tags (e.g. 'function-after[...]') from the location.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        msg = e["msg"].removeprefix("Value error, ")
        where = _field_path(loc)
        problems.append(f"{where}: {msg}" if where else msg)
    return "; ".join(problems)


def load_job(document: dict[str, Any]) -> DistillationJob:
    if not isinstance(document, dict):
        raise SpecError("the job document must be a YAML mapping (a DistillationJob)")
    try:
        return DistillationJob.model_validate(document)
    except ValidationError as err:
        raise SpecError(f"invalid DistillationJob: {describe_validation_error(err)}") from None


def load_job_file(path: str | Path) -> DistillationJob:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job file not found: {path}")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "DistillationJob"]
    if len(jobs) != 1:
        raise SpecError(f"{path}: expected exactly one DistillationJob document, found {len(jobs)}")
    return load_job(jobs[0])
