"""Reading datasets (JSONL text, NPZ arrays) into memory, with errors that point at the line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.api.job import Dataset, DatasetFormat
from distillery_trainer.errors import InputError

MAX_CLASSES = 100_000


@dataclass
class Split:
    """One split: texts (for text tasks) or a feature array, plus optional raw labels."""

    name: str
    texts: list[str] | None = None
    features: np.ndarray | None = None
    raw_labels: list | None = None  # as found in the file (ints or class names)
    labels: np.ndarray | None = None  # int64 class ids once mapped by a LabelMap

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.features)


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
    texts: list[str] = []
    labels: list = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if max_rows is not None and len(texts) >= max_rows:
                break
            row = _parse_line(raw, path, lineno)
            if row is None:
                continue
            if not isinstance(row, dict) or not isinstance(row.get(spec.text_field), str):
                raise InputError(
                    f"{path}: line {lineno}: expected an object with a string field "
                    f"{spec.text_field!r} (dataset.textField)"
                )
            texts.append(row[spec.text_field])
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
    if not texts:
        raise InputError(f"{path}: no rows in the {name} split")
    if labels and len(labels) != len(texts):
        raise InputError(f"{path}: some rows have a {spec.label_field!r} field and some do not")
    return Split(name=name, texts=texts, raw_labels=labels or None)


def _npz_array(arrays, key: str, path: Path, field: str) -> np.ndarray:
    """One array of an NPZ file, read without pickles; a bad member is named, not dumped."""
    try:
        return arrays[key]
    except ValueError:
        raise InputError(
            f"{path}: array {key!r} ({field}) holds Python objects; only numeric arrays are read "
            "(nothing is unpickled)"
        ) from None
    except Exception:  # noqa: BLE001 - zip and format errors of a damaged member
        raise InputError(f"{path}: array {key!r} ({field}) cannot be read (damaged NPZ member)") from None


def _first_bad_row(mask_ok: np.ndarray) -> int:
    """1-based index of the first row holding a False in `mask_ok` (rows are the first axis)."""
    per_row = mask_ok.reshape(len(mask_ok), -1).all(axis=1)
    return int(np.argmin(per_row)) + 1


def read_npz(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool) -> Split:
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
    raw_x = _npz_array(arrays, spec.features_field, path, "dataset.featuresField")
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
    with np.errstate(over="ignore"):
        x = np.asarray(raw_x, dtype=np.float32)  # float64 beyond float32's range becomes inf: refused below
    finite = np.isfinite(x)
    if not finite.all():
        raise InputError(
            f"{path}: row {_first_bad_row(finite)}: array {spec.features_field!r} (dataset.featuresField) "
            "holds NaN or infinite values"
        )
    raw = None if y is None else [v.item() for v in y]
    return Split(name=name, features=x, raw_labels=raw)


def read_split(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool) -> Split:
    if not path.is_file():
        raise InputError(f"dataset.{name}Uri: file not found: {path}")
    reader = read_jsonl if spec.format == DatasetFormat.JSONL else read_npz
    return reader(path, spec, name, max_rows, need_labels)
