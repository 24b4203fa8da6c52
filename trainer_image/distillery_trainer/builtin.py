"""Small built-in torch architectures (MLP, CNN) for tabular and image data.

Each is a stem, a list of same-shape residual blocks (the layers extraction works on) and a
head. They are stored as `config.json` + `model.safetensors`, so loading never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distillery_trainer.errors import InputError

CONFIG_MARKER = "distillery-builtin"


@dataclass
class BuiltinConfig:
    architecture: str  # "mlp" or "cnn"
    num_classes: int
    hidden_size: int = 128
    num_blocks: int = 4
    input_dim: int = 0  # mlp: number of features
    in_channels: int = 1  # cnn
    image_size: list[int] = field(default_factory=lambda: [8, 8])  # cnn: (H, W)

    def to_json(self) -> dict:
        return {"model_type": CONFIG_MARKER, **asdict(self)}


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(self.norm(x)))


class ResidualConvBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class BuiltinNet(nn.Module):
    """stem -> blocks -> head; `forward` returns logits and, on request, every block boundary."""

    def __init__(self, config: BuiltinConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        if config.architecture == "mlp":
            if config.input_dim < 1:
                raise InputError("mlp config needs input_dim >= 1")
            self.stem = nn.Sequential(nn.Linear(config.input_dim, h), nn.GELU())
            self.blocks = nn.ModuleList(ResidualMLPBlock(h) for _ in range(config.num_blocks))
            self.head = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, config.num_classes))
        elif config.architecture == "cnn":
            self.stem = nn.Sequential(
                nn.Conv2d(config.in_channels, h, kernel_size=3, padding=1), nn.BatchNorm2d(h), nn.ReLU()
            )
            self.blocks = nn.ModuleList(ResidualConvBlock(h) for _ in range(config.num_blocks))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(h, config.num_classes))
        else:
            raise InputError(f"unknown built-in architecture {config.architecture!r} (use mlp or cnn)")

    def shape_input(self, x: torch.Tensor) -> torch.Tensor:
        """Flat feature rows become images for the CNN (digits: 64 -> 1x8x8)."""
        if self.config.architecture == "cnn" and x.dim() == 2:
            return x.view(x.shape[0], self.config.in_channels, *self.config.image_size)
        if self.config.architecture == "cnn" and x.dim() == 3:
            return x.unsqueeze(1)
        return x

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False):
        h = self.stem(self.shape_input(x))
        hidden = [h]
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        logits = self.head(h)
        return (logits, hidden) if output_hidden_states else logits

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        """A block output as one vector per example (for hidden-state losses)."""
        return h.mean(dim=(2, 3)) if h.dim() == 4 else h


def save_builtin(model: BuiltinNet, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_json(), indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(directory / "model.safetensors"))


def is_builtin_dir(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == CONFIG_MARKER
    except json.JSONDecodeError:
        return False


# Bounds for a built-in config read from a file: generous for real models, and small enough
# that a hostile config cannot make the trainer allocate terabytes before anything is checked.
_INT_FIELDS = {"num_classes": (1, 100_000), "hidden_size": (1, 65_536), "num_blocks": (1, 1024),
               "input_dim": (0, 10_000_000), "in_channels": (1, 4096)}


def read_builtin_config(config_path: Path) -> BuiltinConfig:
    """A checked BuiltinConfig from config.json; errors name the file and the field."""
    try:
        raw = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{config_path}: not a valid UTF-8 JSON file") from None
    if not isinstance(raw, dict) or raw.pop("model_type", None) != CONFIG_MARKER:
        raise InputError(f"{config_path}: not a Distillery built-in model config")
    known = set(BuiltinConfig.__dataclass_fields__)
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise InputError(f"{config_path}: unknown fields {unknown[:5]}")
    if raw.get("architecture") not in ("mlp", "cnn"):
        raise InputError(f"{config_path}: field 'architecture' must be mlp or cnn")
    for name, (low, high) in _INT_FIELDS.items():
        value = raw.get(name, BuiltinConfig.__dataclass_fields__[name].default)
        if name == "num_classes" and name not in raw:
            raise InputError(f"{config_path}: field 'num_classes' is required")
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(f"{config_path}: field {name!r} must be an integer in {low}..{high}")
    size = raw.get("image_size", [8, 8])
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65_536 for v in size)):
        raise InputError(f"{config_path}: field 'image_size' must be two integers in 1..65536")
    return BuiltinConfig(**raw)


def load_builtin(directory: Path) -> BuiltinNet:
    if not directory.is_dir():
        raise InputError(f"{directory}: a torch teacher is a directory with config.json and model.safetensors")
    config_path = directory / "config.json"
    weights = directory / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise InputError(f"{directory}: a torch teacher needs config.json and model.safetensors")
    model = BuiltinNet(read_builtin_config(config_path))
    try:
        state = load_file(str(weights))
    except Exception:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, ValueError
        raise InputError(f"{weights}: not a valid safetensors file") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # size mismatch between a tensor and the config
        raise InputError(f"{weights}: tensor shapes do not match {config_path.name}") from None
    if missing or unexpected:
        raise InputError(f"{weights}: weights do not match config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise InputError(f"{weights}: tensor {bad[0]!r} holds NaN or infinite values")
    return model
