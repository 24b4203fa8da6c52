"""Reading datasets (JSONL text, NPZ arrays), with errors that point at the line.

Rows are not held in memory: a JSONL split keeps the byte offset of each row's line and reads
its texts back in chunks when they are encoded; an NPZ split's features are memory-mapped from
the archive (or from a copy of a compressed member, made in chunks). Only the labels are read
whole (a few bytes per row).
"""

from __future__ import annotations

import contextlib
import json
import operator
import shutil
import struct
import zipfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.api.job import Dataset, DatasetFormat
from distillery_trainer.errors import InputError

MAX_CLASSES = 100_000
# Rows converted, checked or read back at a time: bounded memory, few calls.
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class TextRows:
    """The texts of a JSONL split, left in its file: each row's line offset and the text field."""

    path: Path
    offsets: np.ndarray  # int64 byte offset of each row's line
    field: str

    def __len__(self) -> int:
        return len(self.offsets)

    def chunks(self, size: int) -> Iterator[list[str]]:
        """The texts, `size` rows at a time (lines were checked when the split was read)."""
        with self.path.open("rb") as fh:
            for start in range(0, len(self.offsets), size):
                texts = []
                for offset in self.offsets[start:start + size]:
                    fh.seek(int(offset))
                    try:
                        row = json.loads(fh.readline())
                    except ValueError:  # JSON and UTF-8 errors: the lines were fine when first read
                        row = None
                    if not isinstance(row, dict) or not isinstance(row.get(self.field), str):
                        raise InputError(f"{self.path}: the file changed while it was read")
                    texts.append(row[self.field])
                yield texts


    def subset(self, rows: list[int]) -> TextRows:
        """These rows only, still in the file."""
        return TextRows(self.path, self.offsets[rows], self.field)

    def text(self, row: int) -> str:
        return next(self.subset([row]).chunks(1))[0]


@dataclass
class JoinedTextRows:
    """Several TextRows read one after another (a train split and the old rows it replays)."""

    parts: list[TextRows]

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def text(self, row: int) -> str:
        for part in self.parts:
            if row < len(part):
                return part.text(row)
            row -= len(part)
        raise IndexError(row)

    def chunks(self, size: int) -> Iterator[list[str]]:
        pending: list[str] = []
        for part in self.parts:
            for texts in part.chunks(size):
                pending.extend(texts)
                while len(pending) >= size:
                    yield pending[:size]
                    pending = pending[size:]
        if pending:
            yield pending


@dataclass
class Split:
    """One split: texts (for text tasks; in memory, or `text_rows` left in the file) or a feature
    array (possibly memory-mapped), plus optional raw labels."""

    name: str
    texts: list[str] | None = None
    features: np.ndarray | None = None
    raw_labels: list | None = None  # as found in the file (ints or class names)
    labels: np.ndarray | None = None  # int64 class ids once mapped by a LabelMap
    text_rows: TextRows | JoinedTextRows | None = None

    def __len__(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        if self.text_rows is not None:
            return len(self.text_rows)
        return len(self.features)

    @property
    def is_text(self) -> bool:
        return self.texts is not None or self.text_rows is not None

    def text_chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[str]]:
        if self.texts is not None:
            for start in range(0, len(self.texts), size):
                yield self.texts[start:start + size]
        else:
            yield from self.text_rows.chunks(size)

    def all_texts(self) -> list[str]:
        """Every text in memory (for splits read whole anyway: in-memory encoding)."""
        return [text for chunk in self.text_chunks() for text in chunk]

    def row_texts(self) -> Sequence[str]:
        """The texts by row, each read from its file when asked (for the few rows a step picks,
        such as the zero-shot prompts, without the split in memory)."""
        return self.texts if self.texts is not None else RowTexts(self.text_rows)


class RowTexts(Sequence[str]):
    """Texts left in their file(s), read one row at a time."""

    def __init__(self, rows: TextRows | JoinedTextRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row):
        row = operator.index(row)  # one row at a time: a slice is a TypeError
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        return self.rows.text(row % len(self))


class LabelMap:
    """Class names <-> ids. Integer labels are used as ids; string labels are mapped."""

    def __init__(self, names: list[str], origin: str = "the teacher's"):
        self.names = names
        self.origin = origin  # whose labels these are, for error messages
        self._ids = {n: i for i, n in enumerate(names)}

    @classmethod
    def infer(cls, raw_labels: list, fixed: list[str] | None = None, num_classes: int | None = None) -> LabelMap:
        """Names from the teacher when it has them; integer labels are ids (as many classes as
        the teacher predicts, when known); other labels are class names in sorted order."""
        if fixed:
            return cls(fixed)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels):
            largest = int(max(raw_labels))
            if largest >= MAX_CLASSES:  # a class id this large is a broken file, not a classifier
                raise InputError(f"dataset.labelField: integer labels must be class ids below {MAX_CLASSES}")
            count = max(largest + 1, num_classes or 0)
            return cls([str(i) for i in range(count)], "the")
        return cls(sorted({str(v) for v in raw_labels}), "the train split's")

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, raw_labels: list, where: str, field: str) -> np.ndarray:
        """Class ids for `raw_labels`. Errors name the split, row and field, never the value:
        a label may be anything the data holds (a secret included), and error messages travel
        to job status and events that more people can read than the data."""
        ids = np.empty(len(raw_labels), dtype=np.int64)
        for row, value in enumerate(raw_labels):
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                if not 0 <= int(value) < len(self.names):
                    raise InputError(
                        f"{where} row {row + 1}: label is out of range 0..{len(self.names) - 1} "
                        f"(field {field!r})"
                    )
                ids[row] = int(value)
            elif str(value) in self._ids:
                ids[row] = self._ids[str(value)]
            else:
                raise InputError(
                    f"{where} row {row + 1}: label is not one of {self.origin} {len(self.names)} labels "
                    f"(field {field!r})"
                )
        return ids


def _refuse_constant(name: str):
    # Python's json accepts NaN, Infinity and -Infinity, which are not JSON and never valid data.
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_line(raw: bytes, path: Path, lineno: int):
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: line {lineno}: not valid UTF-8") from None
    if not line.strip():
        return None
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: line {lineno}: not valid JSON ({err.msg})") from None
    except ValueError:
        raise InputError(f"{path}: line {lineno}: NaN or infinite number (not valid JSON)") from None
    except RecursionError:
        raise InputError(f"{path}: line {lineno}: JSON nested too deeply") from None


def _is_label(value) -> bool:
    """Labels are class names or integer class ids; anything else is refused up front."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def read_jsonl(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool) -> Split:
    """Every line checked; the texts stay in the file (Split.text_rows), the labels are kept."""
    offsets = array("q")  # 8 bytes a row
    labels: list = []
    position = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            start, position = position, position + len(raw)
            if max_rows is not None and len(offsets) >= max_rows:
                break
            row = _parse_line(raw, path, lineno)
            if row is None:
                continue
            if not isinstance(row, dict) or not isinstance(row.get(spec.text_field), str):
                raise InputError(
                    f"{path}: line {lineno}: expected an object with a string field "
                    f"{spec.text_field!r} (dataset.textField)"
                )
            offsets.append(start)
            if spec.label_field in row:
                if not _is_label(row[spec.label_field]):
                    raise InputError(
                        f"{path}: line {lineno}: field {spec.label_field!r} (dataset.labelField) must be "
                        "a string or an integer"
                    )
                labels.append(row[spec.label_field])
            elif need_labels:
                raise InputError(
                    f"{path}: line {lineno}: missing label field {spec.label_field!r} (dataset.labelField)"
                )
    if not offsets:
        raise InputError(f"{path}: no rows in the {name} split")
    if labels and len(labels) != len(offsets):
        raise InputError(f"{path}: some rows have a {spec.label_field!r} field and some do not")
    return Split(name=name, raw_labels=labels or None,
                 text_rows=TextRows(path, np.frombuffer(offsets, dtype=np.int64), spec.text_field))


class _ObjectArray(ValueError):
    """An NPZ member of Python objects (which only unpickling could read)."""


@contextlib.contextmanager
def _member_errors(path: Path, key: str, field: str) -> Iterator[None]:
    """Errors reading one NPZ member, as InputErrors that name the member and never dump it."""
    try:
        yield
    except _ObjectArray:
        raise InputError(
            f"{path}: array {key!r} ({field}) holds Python objects; only numeric arrays are read "
            "(nothing is unpickled)"
        ) from None
    except Exception:  # noqa: BLE001 - zip and format errors of a damaged member
        raise InputError(f"{path}: array {key!r} ({field}) cannot be read (damaged NPZ member)") from None


def _npz_array(arrays, key: str, path: Path, field: str) -> np.ndarray:
    """One (small) array of an NPZ file, read whole without pickles."""
    with _member_errors(path, key, field):
        try:
            return arrays[key]
        except ValueError:  # numpy refuses object arrays when pickles are not allowed
            raise _ObjectArray(key) from None


def _stored_member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where an uncompressed member's bytes start in the archive (after its local header)."""
    with path.open("rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise ValueError("bad local header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        return info.header_offset + 30 + name_length + extra_length


def _mapped_member(path: Path, key: str, scratch: Path) -> np.ndarray:
    """An NPZ member as a memory-mapped array: in place when it is stored uncompressed
    (np.savez), else from a copy decompressed in chunks into `scratch` (np.savez_compressed).
    Raises _ObjectArray, or another error for a damaged member."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy" if f"{key}.npy" in archive.namelist() else key)
        if info.compress_type == zipfile.ZIP_STORED:
            start = _stored_member_offset(path, info)
            with path.open("rb") as fh:
                fh.seek(start)
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(fh)
                data_start = fh.tell()
            if dtype.hasobject:
                raise _ObjectArray(key)
            if data_start - start + dtype.itemsize * int(np.prod(shape)) > info.file_size:
                raise ValueError("truncated member")
            # Copy-on-write: writable for torch, never written back.
            return np.memmap(path, dtype=dtype, mode="c", offset=data_start, shape=shape,
                             order="F" if fortran else "C")
        scratch.mkdir(parents=True, exist_ok=True)
        copy = scratch / f"{key}.npy"
        with archive.open(info) as source, copy.open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 22)
    try:
        return np.load(copy, mmap_mode="c", allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "object" in str(err).lower():
            raise _ObjectArray(key) from None
        raise


def _first_bad_row(mask_ok: np.ndarray) -> int:
    """1-based index of the first row holding a False in `mask_ok` (rows are the first axis)."""
    per_row = mask_ok.reshape(len(mask_ok), -1).all(axis=1)
    return int(np.argmin(per_row)) + 1


def _as_float32(raw: np.ndarray, path: Path, scratch: Path, name: str, field: str) -> np.ndarray:
    """The features as float32 (memory-mapped), checked finite, in chunks of rows."""
    if raw.dtype == np.float32 and raw.flags.c_contiguous:
        out = raw
    else:
        scratch.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(scratch / f"{name}-features-float32.npy", mode="w+", dtype=np.float32,
                                        shape=raw.shape)
    for start in range(0, len(raw), CHUNK_ROWS):
        chunk = raw[start:start + CHUNK_ROWS]
        if out is not raw:
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
                out[start:start + CHUNK_ROWS] = chunk
            chunk = out[start:start + CHUNK_ROWS]
        finite = np.isfinite(chunk)
        if not finite.all():
            raise InputError(f"{path}: row {start + _first_bad_row(finite)}: array {field!r} "
                             "(dataset.featuresField) holds NaN or infinite values")
    if out is not raw:
        out.flush()
    return out


def read_npz(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool,
             scratch: Path) -> Split:
    """The labels read whole; the features memory-mapped (converted to float32 in `scratch`
    when they are stored otherwise)."""
    try:
        arrays = np.load(path, allow_pickle=False)  # never unpickle: object arrays are refused
    except Exception:  # noqa: BLE001 - numpy raises ValueError, OSError, zipfile and EOF errors
        raise InputError(f"{path}: not a readable NPZ file") from None
    if not hasattr(arrays, "files"):
        raise InputError(f"{path}: a single .npy array, not an NPZ archive of named arrays")
    if spec.features_field not in arrays.files:
        raise InputError(
            f"{path}: no array {spec.features_field!r} (dataset.featuresField); has {sorted(arrays.files)[:20]}"
        )
    with _member_errors(path, spec.features_field, "dataset.featuresField"):
        raw_x = _mapped_member(path, spec.features_field, scratch / name)
    if raw_x.dtype.kind not in "biuf":
        raise InputError(
            f"{path}: array {spec.features_field!r} (dataset.featuresField) has dtype {raw_x.dtype.str}; "
            "expected numbers"
        )
    if raw_x.ndim < 2:
        raise InputError(
            f"{path}: array {spec.features_field!r} (dataset.featuresField) has shape {raw_x.shape}; "
            "expected one row of features per example (2 or more dimensions)"
        )
    y = None
    if spec.label_field in arrays.files:
        y = _npz_array(arrays, spec.label_field, path, "dataset.labelField")
        if y.dtype.kind not in "biuU" or y.ndim != 1:
            raise InputError(
                f"{path}: array {spec.label_field!r} (dataset.labelField) must be one integer or string "
                f"label per row; has dtype {y.dtype.str} and shape {y.shape}"
            )
    elif need_labels:
        raise InputError(f"{path}: no label array {spec.label_field!r} (dataset.labelField)")
    if y is not None and len(y) != len(raw_x):
        raise InputError(f"{path}: {len(raw_x)} feature rows but {len(y)} labels")
    if max_rows is not None:
        raw_x = raw_x[:max_rows]
        y = None if y is None else y[:max_rows]
    if len(raw_x) == 0:
        raise InputError(f"{path}: no rows in the {name} split")
    x = _as_float32(raw_x, path, scratch, name, spec.features_field)
    raw = None if y is None else [v.item() for v in y]
    return Split(name=name, features=x, raw_labels=raw)


def read_split(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool,
               scratch: Path) -> Split:
    """A split of either format; `scratch` is a folder of the run's for NPZ copies."""
    if not path.is_file():
        raise InputError(f"dataset.{name}Uri: file not found: {path}")
    if spec.format == DatasetFormat.JSONL:
        return read_jsonl(path, spec, name, max_rows, need_labels)
    return read_npz(path, spec, name, max_rows, need_labels, scratch)
