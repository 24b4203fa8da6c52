"""Turning splits into tensors once, and slicing batches out of them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distillery_trainer.data import Split


@dataclass
class Encoded:
    """A split as N-first tensors. Text is padded once to the split's longest row; each batch is
    trimmed to its own longest row so short texts cost little."""

    tensors: dict[str, torch.Tensor]
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @property
    def is_text(self) -> bool:
        return "attention_mask" in self.tensors

    def batch(self, index: torch.Tensor | slice, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        out = {k: v[index] for k, v in self.tensors.items()}
        if self.is_text:
            width = int(out["attention_mask"].sum(1).max())
            out = {k: v[:, :width] for k, v in out.items()}
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def rows(self, index: torch.Tensor) -> Encoded:
        """The rows at `index`, as their own split."""
        return Encoded({k: v[index] for k, v in self.tensors.items()}, None if self.labels is None else self.labels[index])

    def batches(self, batch_size: int, device: torch.device | str = "cpu"):
        for start in range(0, len(self), batch_size):
            yield self.batch(slice(start, start + batch_size), device)


def encode_text(split: Split, tokenizer, max_length: int) -> Encoded:
    enc = tokenizer(
        split.texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt"
    )
    tensors = {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
    return Encoded(tensors, _labels(split))


def encode_features(split: Split) -> Encoded:
    return Encoded({"features": torch.from_numpy(np.ascontiguousarray(split.features))}, _labels(split))


def _labels(split: Split) -> torch.Tensor | None:
    return None if split.labels is None else torch.from_numpy(split.labels)
