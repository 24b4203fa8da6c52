"""The decoder wrapper: a Hugging Face causal language model behind the `Net` interface.

It loads a teacher directory safely (safetensors only, no remote code, known architectures),
cuts layers while keeping the config and the KV-cache layer numbering in step, and saves a
student directory that `AutoModelForCausalLM.from_pretrained` and `generate` accept as is.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from distillery.api.job import Task
from distillery_trainer.errors import InputError
from distillery_trainer.nets import Net, Outputs, copy_sidecars, masked_mean

# model_type -> dotted path of the block list inside the *ForCausalLM model.
_LAYER_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gpt2": "transformer.h",
}
SUPPORTED_DECODERS = tuple(sorted(_LAYER_PATHS))

# Files a decoder directory carries besides those nets.copy_sidecars already copies.
_DECODER_SIDECARS = ("tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")

# Config fields that hold one entry per layer and so must follow a cut.
_PER_LAYER_CONFIG = ("layer_types",)


def read_decoder_config(directory: Path) -> dict:
    """The directory's config.json after the safety checks; InputError names the file only."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"{directory}: not a Hugging Face model directory (no config.json)")
    if not any(directory.glob("*.safetensors")):
        # Pickled .bin weights can execute code when loaded.
        raise InputError(f"{directory}: no *.safetensors weights (pickled .bin files are not loaded)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{config_path}: not readable JSON") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: not a JSON object")
    if "auto_map" in config:
        raise InputError(f"{config_path}: the model needs remote code (auto_map), which is not run")
    if config.get("model_type") not in _LAYER_PATHS:
        raise InputError(
            f"{config_path}: model_type is not a supported decoder (supported: {', '.join(SUPPORTED_DECODERS)})"
        )
    if config.get("scale_attn_by_inverse_layer_idx"):
        # Such GPT-2 layers scale by their position, so a cut student would change on reload.
        raise InputError(f"{config_path}: scale_attn_by_inverse_layer_idx is not supported for layer removal")
    return config


class CausalLMNet(Net):
    """A Hugging Face `*ForCausalLM` model: logits are next-token logits (B, L, V)."""

    task = Task.CAUSAL_LM
    input_names = ("input_ids", "attention_mask")

    def __init__(self, model: nn.Module, source_dir: Path | None):
        super().__init__()
        self.model = model
        self.source_dir = source_dir

    @classmethod
    def load(cls, directory: Path) -> CausalLMNet:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress reporting is enough
        hf_logging.set_verbosity_error()
        read_decoder_config(directory)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(directory), use_safetensors=True, trust_remote_code=False,
                attn_implementation="sdpa", dtype=torch.float32,
            )
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - transformers raises many types on a bad directory
            # The type only: transformers' messages can quote config values, which are the teacher's.
            raise InputError(f"{directory}: cannot load the decoder ({type(err).__name__})") from None
        model.eval()
        return cls(model, directory)

    # ------------------------------------------------------------------ layers

    def _layer_parent(self) -> tuple[nn.Module, str]:
        *parents, attr = _LAYER_PATHS[self.model.config.model_type].split(".")
        node = self.model
        for name in parents:
            node = getattr(node, name)
        return node, attr

    def layer_list(self) -> nn.ModuleList:
        parent, attr = self._layer_parent()
        return getattr(parent, attr)

    def _set_layers(self, layers: nn.ModuleList, indices: list[int]) -> None:
        parent, attr = self._layer_parent()
        setattr(parent, attr, layers)
        config = self.model.config
        config.num_hidden_layers = len(layers)  # GPT-2 maps it to n_layer
        for name in _PER_LAYER_CONFIG:
            values = getattr(config, name, None)
            if isinstance(values, list) and len(values) > max(indices, default=-1):
                setattr(config, name, [values[i] for i in indices])
        renumber_attention(layers)

    def _layer_config(self) -> dict:
        config = self.model.config
        return {name: copy.copy(getattr(config, name, None)) for name in ("num_hidden_layers", *_PER_LAYER_CONFIG)}

    def _restore_layer_config(self, saved: dict) -> None:
        for name, value in saved.items():
            if value is not None:
                setattr(self.model.config, name, value)
        renumber_attention(self.layer_list())

    # ------------------------------------------------------------------ running

    def outputs(self, batch: dict[str, torch.Tensor], hidden_states: bool = False) -> Outputs:
        """Next-token logits; `pooled` is the mean final (normed) hidden state; `hidden_states`
        are the raw block boundaries, embeddings first, the last block's output before the
        final norm (transformers reports it after the norm, which would skew block scores)."""
        mask = batch["attention_mask"]
        last_block: list[torch.Tensor] = []
        hook = None
        if hidden_states:
            hook = self.layer_list()[-1].register_forward_hook(
                lambda _module, _args, output: last_block.append(output[0] if isinstance(output, tuple) else output))
        try:
            out = self.model(input_ids=batch["input_ids"], attention_mask=mask,
                             output_hidden_states=True, use_cache=False)
        finally:
            if hook is not None:
                hook.remove()
        hs = list(out.hidden_states)
        pooled = masked_mean(hs[-1], mask)
        if not hidden_states:
            return Outputs(out.logits, pooled, None)
        return Outputs(out.logits, pooled, [*hs[:-1], last_block[-1]])

    def export_module_with_cache(self) -> nn.Module:
        """(input_ids, attention_mask, past key/value per layer...) -> (logits, present key/value
        per layer...): one graph for prefill (past of length 0) and each decode step."""
        return _DecoderWithCache(self.model)

    def cache_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        """Shape of one past key or value tensor: (batch, kv heads, length, head size)."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return batch, int(heads), length, int(head_size)

    # ------------------------------------------------------------------ facts

    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def max_positions(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def ties_embeddings(self) -> bool:
        head, embed = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        return head is not None and head.weight is embed.weight

    def class_count(self) -> int | None:
        return None

    # ------------------------------------------------------------------ saving

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        if self.source_dir is not None:
            copy_sidecars(self.source_dir, directory)
            for name in _DECODER_SIDECARS:
                if (self.source_dir / name).is_file():
                    shutil.copy2(self.source_dir / name, directory / name)


def renumber_attention(layers: nn.ModuleList) -> None:
    """Give the kept layers' attention modules indices 0..k-1: the KV cache is indexed by them."""
    for position, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run `model` with eager attention for tracing: transformers' SDPA path branches on the query
    length (1 or more) in Python, which a trace would freeze at the example's length."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def cache_io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """ONNX names of the past inputs and present outputs, key then value per layer."""
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


class _DecoderWithCache(nn.Module):
    """The decoder with its KV cache as explicit tensors, for a graph that decodes step by step.
    Positions continue after the past, so the attention mask covers past + new tokens
    (left padding is not supported here)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        start = past[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0) + start
        with eager_attention(self.model):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                             position_ids=positions, use_cache=True)
        present = [tensor for layer in out.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (out.logits, *present)
