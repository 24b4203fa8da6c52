"""Reading a DistillationJob or DistillationSearch document and turning validation errors into one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distillery.api.job import DistillationJob
from distillery.api.search import DistillationSearch


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


def _validated(model, document: Any, what: str):
    """`document` as a `model` (DistillationJob, DistillationSearch), or a SpecError naming the fields."""
    kind = model.__name__
    if not isinstance(document, dict):
        raise SpecError(f"the {what} document must be a YAML mapping (a {kind})")
    try:
        return model.model_validate(document)
    except ValidationError as err:
        raise SpecError(f"invalid {kind}: {describe_validation_error(err)}") from None


def load_job(document: dict[str, Any]) -> DistillationJob:
    return _validated(DistillationJob, document, "job")

# A job document is a few KiB; a file far larger is not one (and would only cost memory to parse).
MAX_DOCUMENT_BYTES = 1 << 20


def _parse_documents(text: str, where: str) -> list:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "cannot be parsed"
        raise SpecError(f"{where}:{line} not valid YAML ({problem})") from None
    except RecursionError:
        raise SpecError(f"{where}: not valid YAML (nested too deeply)") from None


def load_job_text(text: str, where: str) -> DistillationJob:
    """A job from YAML or JSON text (e.g. an environment variable); `where` names the source."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise SpecError(f"{where}: larger than {MAX_DOCUMENT_BYTES} bytes")
    docs = _parse_documents(text, where)
    if len(docs) != 1:
        raise SpecError(f"{where}: expected one DistillationJob document, found {len(docs)}")
    try:
        return load_job(docs[0])
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply") from None


def _one_document_of_kind(path: str | Path, kind: str, what: str) -> tuple[Path, dict]:
    """The single `kind` document of a YAML file, read with the same limits and messages for every
    kind (other kinds in the file are ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpecError(f"{what} file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise SpecError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes; not a {what} file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise SpecError(f"{path}: line {line}: not valid UTF-8") from None
    docs = _parse_documents(text, str(path))
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    if len(found) != 1:
        raise SpecError(f"{path}: expected exactly one {kind} document, found {len(found)}")
    return path, found[0]


def load_job_file(path: str | Path) -> DistillationJob:
    path, doc = _one_document_of_kind(path, "DistillationJob", "job")
    try:
        return load_job(doc)
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply") from None


def load_search(document: dict[str, Any]) -> DistillationSearch:
    return _validated(DistillationSearch, document, "search")


def load_search_file(path: str | Path) -> DistillationSearch:
    """The one DistillationSearch document of a YAML file (other kinds in the file are ignored)."""
    path, doc = _one_document_of_kind(path, "DistillationSearch", "search")
    try:
        return load_search(doc)
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply") from None
