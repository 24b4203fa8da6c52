"""What a model produced on a split: logits (classifiers) and one pooled vector per example.

Kept apart from teacher.py so the task strategies, evaluation and training can share it without
importing the model loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TeacherOutputs:
    """What the student learns from: logits (classification) and a pooled vector per example."""

    logits: torch.Tensor | None
    pooled: torch.Tensor | None

    def as_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        if self.logits is not None:
            out[f"{prefix}.logits"] = self.logits.contiguous()
        if self.pooled is not None:
            out[f"{prefix}.pooled"] = self.pooled.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> TeacherOutputs:
        return cls(tensors.get(f"{prefix}.logits"), tensors.get(f"{prefix}.pooled"))

    @classmethod
    def concat(cls, parts: list[TeacherOutputs]) -> TeacherOutputs:
        logits = [p.logits for p in parts if p.logits is not None]
        pooled = [p.pooled for p in parts if p.pooled is not None]
        return cls(torch.cat(logits) if logits else None, torch.cat(pooled) if pooled else None)

    def rows(self, index: torch.Tensor) -> TeacherOutputs:
        """The outputs of the rows at `index` (a batch, or a sample to compare)."""
        return TeacherOutputs(None if self.logits is None else self.logits[index],
                              None if self.pooled is None else self.pooled[index])

    def to(self, device: torch.device | str) -> TeacherOutputs:
        return TeacherOutputs(None if self.logits is None else self.logits.to(device),
                              None if self.pooled is None else self.pooled.to(device))

    def __len__(self) -> int:
        present = self.logits if self.logits is not None else self.pooled
        return 0 if present is None else int(present.shape[0])

    def first_non_finite_row(self) -> int | None:
        """The first row holding NaN or inf in any output, or None when all are finite."""
        bad = None
        for tensor in (self.logits, self.pooled):
            if tensor is None:
                continue
            rows = (~torch.isfinite(tensor.float())).reshape(len(tensor), -1).any(dim=1).nonzero()
            if len(rows):
                row = int(rows[0])
                bad = row if bad is None else min(bad, row)
        return bad
