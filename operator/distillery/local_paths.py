"""Relative local paths in a job file are resolved against the file's folder, so
`distillery run path/to/job.yaml` works from any working directory; `~` is the user's home."""

from __future__ import annotations

from pathlib import Path

from distillery.api.job import DistillationJob


def _resolve(uri: str | None, base: Path) -> str | None:
    if uri is None or "://" in uri and not uri.startswith("file://"):
        return uri
    path = uri.removeprefix("file://")
    if path.startswith("~"):  # ~/x and ~user/x are the user's home, as in a shell
        return "file://" + str(Path(path).expanduser().resolve())
    if path.startswith("/"):
        return uri
    return "file://" + str((base / path).resolve())


def resolve_local_uris(job: DistillationJob, base: Path) -> DistillationJob:
    """A copy of `job` whose relative file paths are absolute (s3:// and absolute paths kept)."""
    spec = job.spec.model_copy(deep=True)
    spec.teacher.uri = _resolve(spec.teacher.uri, base)
    spec.teacher.tokenizer_uri = _resolve(spec.teacher.tokenizer_uri, base)
    spec.dataset.train_uri = _resolve(spec.dataset.train_uri, base)
    spec.dataset.eval_uri = _resolve(spec.dataset.eval_uri, base)
    spec.output.uri = _resolve(spec.output.uri, base)
    spec.output.cache_uri = _resolve(spec.output.cache_uri, base)
    if spec.student.base is not None:
        spec.student.base.uri = _resolve(spec.student.base.uri, base)
    return job.model_copy(update={"spec": spec})
