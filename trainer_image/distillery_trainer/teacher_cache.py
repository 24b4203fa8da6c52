"""The teacher-output cache: where it lives, the content key, and how an entry is verified.

The key hashes what the outputs depend on (the teacher's files and the encoded train and eval
tensors), not the job spec, so jobs that only differ in the student or the healing recipe (a
sweep over keepLayers, an edit of the student in the cluster) reuse one teacher pass.

An entry is believed only after two checks (DESIGN: what is read back from a store is verified):
its safetensors metadata carries the key and a sha256 of its tensors, which catches a damaged or
misplaced file; and the teacher is run again on a few rows picked at random in this run and must
agree with the entry, which catches an entry rewritten with a fresh hash by anyone who can write a
shared cacheUri (they cannot know which rows will be checked).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from distillery.api.job import DistillationJobSpec, Task
from distillery.api.result import InputDigests
from distillery.store import Store, open_store
from distillery_trainer.encode import Encoded
from distillery_trainer.outputs import TeacherOutputs

# Bump when the cached file's layout or the way outputs are computed changes.
CACHE_FORMAT = 2
DEFAULT_PREFIX = "cache/"
# Rows of each split the teacher is re-run on to check an entry, and how close it must come:
# per row, |cached - fresh| <= RTOL * |fresh| + ATOL * sqrt(width) (bf16 on a GPU stays well inside).
SPOT_CHECK_ROWS = 8
SPOT_CHECK_RTOL = 0.05
SPOT_CHECK_ATOL = 1e-3
# Rows hashed, written or checked at a time: entries larger than memory stream through.
CHUNK_ROWS = 4096
# The dtypes outputs are kept in (logits, pooled vectors, log-probabilities, token ids), by their
# safetensors names.
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int32: "I32", torch.int64: "I64"}
NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


class BadCacheEntry(ValueError):
    """A cache entry that is not believed; the message says why, without any data values."""


# ----------------------------------------------------------------------------- keys and digests


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


def row_bytes(tensor: torch.Tensor, rows: int | None = None) -> Iterator[np.ndarray]:
    """The tensor's values as raw bytes (row-major), `rows` (default CHUNK_ROWS) rows at a time."""
    rows = rows or CHUNK_ROWS
    tensor = tensor.detach()
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    for start in range(0, len(tensor), rows):
        yield tensor[start:start + rows].cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors: names, dtypes, shapes and values (read a chunk of rows at a time)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        for chunk in row_bytes(tensor):
            digest.update(chunk)
    return digest.hexdigest()


def encoded_digest(data: Encoded) -> str:
    """sha256 over the encoded tensors (names, dtypes, shapes, values) and the labels."""
    tensors = dict(data.tensors)
    if data.labels is not None:
        tensors["__labels__"] = data.labels
    return tensors_digest(tensors)


def input_digests(teacher_path: Path, train: Encoded, evals: Encoded, base_path: Path | None) -> InputDigests:
    return InputDigests(teacher=file_tree_digest(teacher_path), train=encoded_digest(train),
                        eval=encoded_digest(evals), base=None if base_path is None else file_tree_digest(base_path))


def key_for(spec: DistillationJobSpec, digests: InputDigests) -> str:
    parts = [str(CACHE_FORMAT), spec.teacher.format.value, spec.teacher.task.value,
             digests.teacher, digests.train, digests.eval]
    if spec.teacher.task == Task.CAUSAL_LM:  # a causal LM's cached log-probabilities depend on T and k
        parts += [f"T={spec.distillation.temperature!r}", f"k={spec.distillation.top_k}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def content_key(spec: DistillationJobSpec, teacher_path: Path, train: Encoded, evals: Encoded) -> str:
    return key_for(spec, input_digests(teacher_path, train, evals, None))


def cache_location(spec: DistillationJobSpec, output_store: Store) -> tuple[Store, str]:
    """(store, key prefix) of the cache: output.cacheUri on the output's store and credentials,
    or cache/ under the job's own output."""
    if spec.output.cache_uri is None:
        return output_store, DEFAULT_PREFIX
    return open_store(spec.output.cache_uri, endpoint=spec.output.endpoint, region=spec.output.region), ""


def entry_key(prefix: str, key: str) -> str:
    return f"{prefix}teacher-outputs-{key}.safetensors"


# ----------------------------------------------------------------------------- entries


def write_entry(stream: BinaryIO, key: str, train: TeacherOutputs, evals: TeacherOutputs) -> None:
    """The entry as a safetensors file written to `stream` a chunk of rows at a time (the outputs
    may be memory-mapped and larger than memory); the metadata carries the key and the hash."""
    tensors = {**train.as_tensors("train"), **evals.as_tensors("eval")}
    header: dict = {"__metadata__": {"format": str(CACHE_FORMAT), "key": key, "sha256": tensors_digest(tensors)}}
    # Widest dtype first, as safetensors writes them, so every tensor starts aligned to its dtype.
    names = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    offset = 0
    for name in names:
        tensor = tensors[name]
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"outputs {name} have dtype {tensor.dtype}, which the cache does not keep")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    stream.write(struct.pack("<Q", len(text)))
    stream.write(text)
    for name in names:
        for chunk in row_bytes(tensors[name]):
            stream.write(chunk.data)


def encode_entry(key: str, train: TeacherOutputs, evals: TeacherOutputs) -> bytes:
    buffer = io.BytesIO()
    write_entry(buffer, key, train, evals)
    return buffer.getvalue()


def _metadata(data: bytes) -> dict:
    """The __metadata__ of a safetensors blob (an 8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise BadCacheEntry("too short to be a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise BadCacheEntry("its header is truncated")
    try:
        header = json.loads(data[8:8 + length])
    except (ValueError, UnicodeDecodeError):
        raise BadCacheEntry("its header is not JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _check_meta(meta: dict, key: str) -> None:
    if meta.get("format") != str(CACHE_FORMAT) or meta.get("key") != key:
        raise BadCacheEntry("it was written for another format or key")


def _believed(tensors: dict[str, torch.Tensor], meta: dict, train_rows: int,
              eval_rows: int) -> tuple[TeacherOutputs, TeacherOutputs]:
    """The outputs of an entry whose tensors match its hash, have one row per example and are finite."""
    if meta.get("sha256") != tensors_digest(tensors):
        raise BadCacheEntry("its content hash does not match its tensors")
    train, evals = TeacherOutputs.from_tensors(tensors, "train"), TeacherOutputs.from_tensors(tensors, "eval")
    for name, outputs, rows in (("train", train, train_rows), ("eval", evals, eval_rows)):
        if not well_shaped(outputs, rows):
            raise BadCacheEntry(f"its {name} outputs do not have one row per {name} example")
        if len(outputs) == 0 and rows > 0:
            raise BadCacheEntry(f"it has no {name} outputs")
        if outputs.first_non_finite_row() is not None:
            raise BadCacheEntry(f"its {name} outputs are not finite")
    return train, evals


def decode_entry(data: bytes, key: str, train_rows: int, eval_rows: int) -> tuple[TeacherOutputs, TeacherOutputs]:
    """The (train, eval) outputs of an entry held in memory, after checking its key, its hash, its
    row counts and that every value is finite. Raises BadCacheEntry."""
    meta = _metadata(data)
    _check_meta(meta, key)
    try:
        tensors = load_safetensors(data)
    except Exception:  # noqa: BLE001 - safetensors raises its own error types
        raise BadCacheEntry("it is not a readable safetensors file") from None
    return _believed(tensors, meta, train_rows, eval_rows)


def read_entry(path: Path, key: str, train_rows: int, eval_rows: int) -> tuple[TeacherOutputs, TeacherOutputs]:
    """decode_entry for an entry downloaded to `path`: the same checks, with the tensors
    memory-mapped from the file instead of read into memory. Raises BadCacheEntry."""
    try:
        with safe_open(str(path), framework="pt") as entry:  # checks the header and the offsets
            meta = entry.metadata() or {}
            names = list(entry.keys())
    except Exception:  # noqa: BLE001 - safetensors raises its own error types
        raise BadCacheEntry("it is not a readable safetensors file") from None
    _check_meta(meta, key)
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    tensors = {}
    for name in names:
        info = header[name]
        dtype = NUMPY_DTYPES.get(info["dtype"])
        if dtype is None:
            raise BadCacheEntry(f"its tensor {name} has dtype {info['dtype']}, which outputs never have")
        shape = tuple(info["shape"])
        begin = 8 + length + info["data_offsets"][0]
        values = np.memmap(path, dtype=dtype, mode="c", offset=begin, shape=shape) if math.prod(shape) \
            else np.zeros(shape, dtype=dtype)
        tensors[name] = torch.from_numpy(values)
    return _believed(tensors, meta, train_rows, eval_rows)


def well_shaped(outputs: TeacherOutputs, rows: int) -> bool:
    """Every output has `rows` rows and the layout its kind needs: (N, width) floats for logits and
    pooled vectors, (N, L, k) log-probabilities and matching non-negative integer ids for top-k."""
    for tensor in (outputs.logits, outputs.pooled):
        if tensor is not None and (tensor.dim() != 2 or tensor.shape[0] != rows or not tensor.is_floating_point()):
            return False
    logprobs, ids = outputs.topk_logprobs, outputs.topk_ids
    if (logprobs is None) != (ids is None):
        return False
    return logprobs is None or (
        logprobs.dim() == 3 and logprobs.shape[0] == rows and logprobs.is_floating_point()
        and ids.shape == logprobs.shape and not ids.is_floating_point() and not bool((ids < 0).any()))


# ----------------------------------------------------------------------------- spot check


def sample_rows(n: int, k: int = SPOT_CHECK_ROWS) -> torch.Tensor:
    """k distinct row numbers in 0..n-1, unpredictable to whoever wrote the entry."""
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    return torch.randperm(n, generator=generator)[:k].sort().values


def rows_agree(cached: torch.Tensor | None, fresh: torch.Tensor | None) -> bool:
    if cached is None or fresh is None:
        return cached is None and fresh is None
    if cached.shape != fresh.shape:
        return False
    # -inf (a top-k token without mass) compares as a very small log-probability.
    cached, fresh = (t.float().flatten(1).clamp(min=-1e4) for t in (cached, fresh))
    distance = (cached - fresh).norm(dim=1)
    allowed = SPOT_CHECK_RTOL * fresh.norm(dim=1) + SPOT_CHECK_ATOL * math.sqrt(fresh.shape[1])
    return bool((distance <= allowed).all())


# A causal LM's top-1 token may flip between near-ties on another device or in bf16; a forged
# entry (ids shifted or shuffled) misses on nearly every position.
SPOT_CHECK_TOP1_AGREEMENT = 0.9


def top_tokens_agree(cached: TeacherOutputs, fresh: TeacherOutputs) -> bool:
    if cached.topk_ids is None or fresh.topk_ids is None:
        return cached.topk_ids is None and fresh.topk_ids is None
    if cached.topk_ids.shape != fresh.topk_ids.shape:
        return False
    same = (cached.topk_ids[..., 0].long() == fresh.topk_ids[..., 0].long()).float().mean()
    return bool(same >= SPOT_CHECK_TOP1_AGREEMENT)


def outputs_agree(cached: TeacherOutputs, fresh: TeacherOutputs) -> bool:
    """The cached rows match a fresh teacher pass: values within tolerance (sorted top-k
    log-probabilities are compared as values) and, for a causal LM, the same top-1 tokens."""
    return (rows_agree(cached.logits, fresh.logits) and rows_agree(cached.pooled, fresh.pooled)
            and rows_agree(cached.topk_logprobs, fresh.topk_logprobs) and top_tokens_agree(cached, fresh))
