"""What a model produced on a split: logits (classifiers), one pooled vector per example, or, for
a causal LM, its most likely next tokens per position.

Kept apart from teacher.py so the task strategies, evaluation and training can share it without
importing the model loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

# Rows checked at a time (bounded memory on large outputs).
CHECK_ROWS = 4096


@dataclass
class TeacherOutputs:
    """What the student learns from. Every field is N-first (one row per example or block)."""

    logits: torch.Tensor | None
    pooled: torch.Tensor | None
    # Causal LM: log-probabilities at the distillation temperature of the k most likely next tokens
    # (N, L, k), sorted descending, and those tokens' ids (N, L, k); k >= vocabulary means all.
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None

    def _present(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def as_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": tensor.contiguous() for name, tensor in self._present().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> TeacherOutputs:
        return cls(**{f.name: tensors.get(f"{prefix}.{f.name}") for f in fields(cls)})

    @classmethod
    def concat(cls, parts: list[TeacherOutputs]) -> TeacherOutputs:
        joined = {}
        for f in fields(cls):
            present = [getattr(p, f.name) for p in parts if getattr(p, f.name) is not None]
            joined[f.name] = torch.cat(present) if present else None
        return cls(**joined)

    def rows(self, index: torch.Tensor) -> TeacherOutputs:
        """The outputs of the rows at `index` (a batch, or a sample to compare)."""
        return TeacherOutputs(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                                 for f in fields(self)})

    def to(self, device: torch.device | str) -> TeacherOutputs:
        return TeacherOutputs(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                                 for f in fields(self)})

    def __len__(self) -> int:
        present = self._present()
        return 0 if not present else int(next(iter(present.values())).shape[0])

    def first_non_finite_row(self) -> int | None:
        """The first row holding NaN or inf in any floating output, or None when all are finite.
        (A top-k log-probability may be -inf when a token has no mass at all: that is finite enough.)"""
        bad = None
        for name, tensor in self._present().items():
            if not tensor.is_floating_point():
                continue
            for start in range(0, len(tensor), CHECK_ROWS):
                values = tensor[start:start + CHECK_ROWS].float()
                broken = torch.isnan(values) | (values == float("inf"))
                if name != "topk_logprobs":
                    broken |= values == float("-inf")
                rows = broken.reshape(len(values), -1).any(dim=1).nonzero()
                if len(rows):
                    row = start + int(rows[0])
                    bad = row if bad is None else min(bad, row)
                    break
        return bad


class OutputWriter:
    """A model's outputs on `rows` rows, written batch by batch into memory-mapped files under
    `folder` (one per output), so a large split's outputs never sit in memory."""

    def __init__(self, folder: Path, rows: int):
        self.folder, self.rows, self.filled = folder, rows, 0
        self.columns: dict[str, np.ndarray] = {}

    def add(self, part: TeacherOutputs) -> None:
        present = part._present()
        if not self.columns:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, tensor in present.items():
                self.columns[name] = np.lib.format.open_memmap(
                    self.folder / f"{name}.npy", mode="w+", dtype=tensor.detach().numpy().dtype,
                    shape=(self.rows, *tensor.shape[1:]))
        if set(present) != set(self.columns):
            raise ValueError("a batch's outputs differ in kind from the first batch's")
        count = len(part)
        for name, tensor in present.items():
            self.columns[name][self.filled:self.filled + count] = tensor.detach().numpy()
        self.filled += count

    def finish(self) -> TeacherOutputs:
        if self.filled != self.rows:
            raise ValueError(f"{self.filled} rows of outputs written, {self.rows} expected")
        for column in self.columns.values():
            column.flush()
        mapped = {name: torch.from_numpy(column) for name, column in self.columns.items()}
        return TeacherOutputs(**{f.name: mapped.get(f.name) for f in fields(TeacherOutputs)})
