"""Where the teacher's outputs are cached, and the content key that says they are still valid.

The key hashes what the outputs depend on (the teacher's files and the encoded train and eval
tensors), not the job spec, so jobs that only differ in the student or the healing recipe (a
sweep over keepLayers, an edit of the student in the cluster) reuse one teacher pass.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from distillery.api.job import DistillationJobSpec
from distillery.store import Store, open_store
from distillery_trainer.encode import Encoded

# Bump when the cached file's layout or the way outputs are computed changes.
CACHE_FORMAT = 1
DEFAULT_PREFIX = "cache/"


def file_tree_digest(path: Path) -> str:
    """sha256 over every file under `path` (or the file itself): relative name, size, contents."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def encoded_digest(data: Encoded) -> str:
    """sha256 over the encoded tensors (names, dtypes, shapes, values) and the labels."""
    digest = hashlib.sha256()
    tensors = dict(data.tensors)
    if data.labels is not None:
        tensors["__labels__"] = data.labels
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def content_key(spec: DistillationJobSpec, teacher_path: Path, train: Encoded, evals: Encoded) -> str:
    parts = [str(CACHE_FORMAT), spec.teacher.format.value, spec.teacher.task.value,
             file_tree_digest(teacher_path), encoded_digest(train), encoded_digest(evals)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def cache_location(spec: DistillationJobSpec, output_store: Store) -> tuple[Store, str]:
    """(store, key prefix) of the cache: output.cacheUri on the output's store and credentials,
    or cache/ under the job's own output."""
    if spec.output.cache_uri is None:
        return output_store, DEFAULT_PREFIX
    return open_store(spec.output.cache_uri, endpoint=spec.output.endpoint, region=spec.output.region), ""


def entry_key(prefix: str, key: str) -> str:
    return f"{prefix}teacher-outputs-{key}.safetensors"
