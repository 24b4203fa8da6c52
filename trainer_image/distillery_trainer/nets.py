"""One interface over the torch models the trainer can cut, train and export.

`Net` hides whether the model is a Hugging Face encoder (classification or sentence embedding)
or a built-in MLP/CNN: the pipeline only asks for outputs, the list of layers, a copy with some
layers kept, a saved directory and an ONNX-exportable module.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distillery.api.job import Task
from distillery_trainer.builtin import BuiltinNet, save_builtin
from distillery_trainer.errors import InputError
from distillery_trainer.tasks import for_task

# Files a Hugging Face / sentence-transformers directory carries besides config and weights.
_SIDECAR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
    "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
)
_SIDECAR_DIRS = ("1_Pooling", "2_Normalize")


@dataclass
class Outputs:
    logits: torch.Tensor | None  # classification tasks
    pooled: torch.Tensor  # one vector per example: the embedding, or the pooled last hidden state
    hidden_states: list[torch.Tensor] | None = None  # block boundaries, len = layers + 1


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


class Net(nn.Module):
    """Base class; subclasses wrap one concrete model."""

    task: Task
    input_names: tuple[str, ...]

    def layer_list(self) -> nn.ModuleList:
        raise NotImplementedError

    def num_layers(self) -> int:
        return len(self.layer_list())

    def outputs(self, batch: dict[str, torch.Tensor], hidden_states: bool = False) -> Outputs:
        raise NotImplementedError

    def with_layers(self, keep: list[int]) -> Net:
        """A deep copy that keeps only the layers at `keep` (in order)."""
        clone = copy.deepcopy(self)
        layers = clone.layer_list()
        clone._set_layers(nn.ModuleList(layers[i] for i in keep), keep)
        return clone

    @contextmanager
    def only_layers(self, keep: list[int]) -> Iterator[Net]:
        """This net running only the layers at `keep`, restored afterwards (no copy: for scoring)."""
        original, saved = self.layer_list(), self._layer_config()
        self._set_layers(nn.ModuleList(original[i] for i in keep), keep)
        try:
            yield self
        finally:
            self._set_layers(original, list(range(len(original))))
            self._restore_layer_config(saved)

    def _set_layers(self, layers: nn.ModuleList, indices: list[int]) -> None:
        """Install `layers` (the old layers at `indices`) and keep the config in step."""
        raise NotImplementedError

    def _layer_config(self) -> dict:
        return {}

    def _restore_layer_config(self, saved: dict) -> None:
        pass

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def export_module(self) -> nn.Module:
        """A module with positional tensor inputs and one tensor output, for torch.onnx.export."""
        raise NotImplementedError

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def class_count(self) -> int | None:
        """How many classes the head predicts (None without a classifier head)."""
        return None


# ----------------------------------------------------------------------------- Hugging Face


def find_layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The (parent, attribute) holding an encoder's block list, for the common layouts."""
    base = getattr(model, "base_model", model)
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer"):
        *parents, attr = path.split(".")
        node = base
        for name in parents:
            node = getattr(node, name, None)
        layers = getattr(node, attr, None) if node is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return node, attr
    raise InputError(f"cannot find the layer list of {type(model).__name__}; supported: BERT-like encoders")


class HFNet(Net):
    """A Hugging Face encoder: sequence classification, or a sentence encoder with pooling."""

    input_names = ("input_ids", "attention_mask")

    def __init__(self, model: nn.Module, task: Task, source_dir: Path | None,
                 pooling: str = "mean", normalize: bool = True):
        super().__init__()
        self.model = model
        self.task = task
        self.has_head = for_task(task).predicts_classes
        self.source_dir = source_dir
        self.pooling = pooling
        self.normalize = normalize

    @classmethod
    def load(cls, directory: Path, task: Task, num_labels: int | None = None) -> HFNet:
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress reporting is enough
        hf_logging.set_verbosity_error()

        if not (directory / "config.json").is_file():
            raise InputError(f"{directory}: not a Hugging Face model directory (no config.json)")
        if not any(directory.glob("*.safetensors")):
            # Refuse pickled .bin weights: loading them can execute code.
            raise InputError(f"{directory}: no *.safetensors weights (pickled .bin files are not loaded)")
        kwargs = {"attn_implementation": "eager", "use_safetensors": True}
        try:
            if not for_task(task).predicts_classes:
                model = AutoModel.from_pretrained(str(directory), **kwargs)
                pooling, normalize = read_sentence_transformers_pooling(directory)
                return cls(model, task, directory, pooling, normalize)
            config = AutoConfig.from_pretrained(str(directory))
            extra = {}
            if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
                extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
            model = AutoModelForSequenceClassification.from_pretrained(str(directory), **kwargs, **extra)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - transformers raises many types on a bad directory
            # The type only: transformers' messages can quote config values, which are the teacher's.
            raise InputError(f"{directory}: cannot load the Hugging Face model ({type(err).__name__})") from None
        return cls(model, task, directory)

    def layer_list(self) -> nn.ModuleList:
        parent, attr = find_layer_list(self.model)
        return getattr(parent, attr)

    def class_count(self) -> int | None:
        return self.model.config.num_labels if self.has_head else None

    # Config fields that describe every layer (e.g. attention type per layer) follow the cut.
    _PER_LAYER_CONFIG = ("layer_types",)

    def _set_layers(self, layers: nn.ModuleList, indices: list[int]) -> None:
        parent, attr = find_layer_list(self.model)
        setattr(parent, attr, layers)
        config = self.model.config
        config.num_hidden_layers = len(layers)
        for name in self._PER_LAYER_CONFIG:
            values = getattr(config, name, None)
            if isinstance(values, list) and len(values) > max(indices, default=-1):
                setattr(config, name, [values[i] for i in indices])

    def _layer_config(self) -> dict:
        config = self.model.config
        return {name: copy.copy(getattr(config, name, None))
                for name in ("num_hidden_layers", *self._PER_LAYER_CONFIG)}

    def _restore_layer_config(self, saved: dict) -> None:
        for name, value in saved.items():
            if value is not None:
                setattr(self.model.config, name, value)

    def outputs(self, batch: dict[str, torch.Tensor], hidden_states: bool = False) -> Outputs:
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
        hs = list(out.hidden_states)
        mask = batch["attention_mask"]
        if not self.has_head:  # a sentence encoder: its pooled embedding is the answer
            pooled = self._pool(hs[-1], mask)
            return Outputs(None, pooled, hs if hidden_states else None)
        return Outputs(out.logits, masked_mean(hs[-1], mask), hs if hidden_states else None)

    def _pool(self, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = last[:, 0]
        elif self.pooling == "max":
            pooled = last.masked_fill(mask.unsqueeze(-1) == 0, -1e4).max(1).values
        else:
            pooled = masked_mean(last, mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        if self.source_dir is not None:
            copy_sidecars(self.source_dir, directory)

    def export_module(self) -> nn.Module:
        return _HFExport(self)


class _HFExport(nn.Module):
    """Explicit positional forward: transformers 5 models take keyword arguments only."""

    def __init__(self, net: HFNet):
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.net.outputs({"input_ids": input_ids, "attention_mask": attention_mask})
        return out.logits if out.logits is not None else out.pooled


def read_sentence_transformers_pooling(directory: Path) -> tuple[str, bool]:
    """Pooling mode and normalisation from a sentence-transformers layout (mean + normalize if absent)."""
    pooling, normalize = "mean", True
    pool_cfg = directory / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            pooling = "max"
    modules = directory / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    return pooling, normalize


def copy_sidecars(source: Path, dest: Path) -> None:
    for name in _SIDECAR_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    for name in _SIDECAR_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, dirs_exist_ok=True)


# ----------------------------------------------------------------------------- built-in


class BuiltinWrapper(Net):
    input_names = ("features",)

    def __init__(self, model: BuiltinNet, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def layer_list(self) -> nn.ModuleList:
        return self.model.blocks

    def class_count(self) -> int | None:
        return self.model.config.num_classes

    def _set_layers(self, layers: nn.ModuleList, indices: list[int]) -> None:
        self.model.blocks = layers
        self.model.config.num_blocks = len(layers)

    def outputs(self, batch: dict[str, torch.Tensor], hidden_states: bool = False) -> Outputs:
        logits, hs = self.model(batch["features"], output_hidden_states=True)
        return Outputs(logits, self.model.pooled(hs[-1]), hs if hidden_states else None)

    def save(self, directory: Path) -> None:
        save_builtin(self.model, directory)

    def export_module(self) -> nn.Module:
        return self.model
