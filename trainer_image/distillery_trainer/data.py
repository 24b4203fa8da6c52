"""Reading datasets (JSONL text, NPZ arrays) into memory, with errors that point at the line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.api.job import Dataset, DatasetFormat
from distillery_trainer.errors import InputError


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

    def __init__(self, names: list[str]):
        self.names = names
        self._ids = {n: i for i, n in enumerate(names)}

    @classmethod
    def infer(cls, raw_labels: list, fixed: list[str] | None = None, num_classes: int | None = None) -> LabelMap:
        """Names from the teacher when it has them; integer labels are ids (as many classes as
        the teacher predicts, when known); other labels are class names in sorted order."""
        if fixed:
            return cls(fixed)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels):
            count = max(int(max(raw_labels)) + 1, num_classes or 0)
            return cls([str(i) for i in range(count)])
        return cls(sorted({str(v) for v in raw_labels}))

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, raw_labels: list, where: str) -> np.ndarray:
        ids = np.empty(len(raw_labels), dtype=np.int64)
        for row, value in enumerate(raw_labels):
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                if not 0 <= int(value) < len(self.names):
                    raise InputError(
                        f"{where}: row {row + 1}: label {int(value)} is out of range "
                        f"0..{len(self.names) - 1}"
                    )
                ids[row] = int(value)
            elif str(value) in self._ids:
                ids[row] = self._ids[str(value)]
            else:
                raise InputError(
                    f"{where}: row {row + 1}: unknown label {value!r} (known: {', '.join(self.names[:20])})"
                )
        return ids


def read_jsonl(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool) -> Split:
    texts: list[str] = []
    labels: list = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if max_rows is not None and len(texts) >= max_rows:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}: line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(spec.text_field), str):
                raise InputError(
                    f"{path}: line {lineno}: expected an object with a string field "
                    f"{spec.text_field!r} (dataset.textField)"
                )
            texts.append(row[spec.text_field])
            if spec.label_field in row:
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


def read_npz(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool) -> Split:
    try:
        arrays = np.load(path, allow_pickle=False)  # never unpickle: object arrays are refused
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable NPZ file without pickles ({err})") from None
    if spec.features_field not in arrays:
        raise InputError(
            f"{path}: no array {spec.features_field!r} (dataset.featuresField); has {sorted(arrays.files)}"
        )
    x = np.asarray(arrays[spec.features_field], dtype=np.float32)
    y = arrays.get(spec.label_field, None)
    if y is None and need_labels:
        raise InputError(f"{path}: no label array {spec.label_field!r} (dataset.labelField)")
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: {len(x)} feature rows but {len(y)} labels")
    if max_rows is not None:
        x = x[:max_rows]
        y = None if y is None else y[:max_rows]
    if len(x) == 0:
        raise InputError(f"{path}: no rows in the {name} split")
    raw = None if y is None else [v.item() if hasattr(v, "item") else v for v in y]
    return Split(name=name, features=x, raw_labels=raw)


def read_split(path: Path, spec: Dataset, name: str, max_rows: int | None, need_labels: bool) -> Split:
    if not path.is_file():
        raise InputError(f"dataset.{name}Uri: file not found: {path}")
    reader = read_jsonl if spec.format == DatasetFormat.JSONL else read_npz
    return reader(path, spec, name, max_rows, need_labels)
