"""Comparing two model directories: parameters, size, layers and the layers they share.

Reads safetensors headers directly (a length-prefixed JSON), so it needs neither torch nor the
weights in memory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
PROVENANCE = "distillery.json"


@dataclass
class ModelSummary:
    path: Path
    parameters: int
    size_bytes: int
    num_layers: int | None
    teacher_uri: str | None  # from distillery.json when Distillery made the model
    source_layers: list[int] | None  # which teacher layers each of its layers came from

    @property
    def layer_origin(self) -> list[int] | None:
        if self.source_layers is not None:
            return self.source_layers
        return None if self.num_layers is None else list(range(self.num_layers))


def safetensors_header(path: Path) -> dict:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def summarize(directory: Path) -> ModelSummary:
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors files")
    params = 0
    for f in files:
        for meta in safetensors_header(f).values():
            n = 1
            for d in meta["shape"]:
                n *= d
            params += n
    size = sum(f.stat().st_size for f in files)
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    layers = config.get("num_hidden_layers", config.get("num_blocks", config.get("n_layers")))
    prov = json.loads((directory / PROVENANCE).read_text()) if (directory / PROVENANCE).is_file() else {}
    return ModelSummary(directory, params, size, layers, prov.get("teacherUri"), prov.get("layersKept"))


def compare(a: Path, b: Path) -> dict:
    """Numbers for `distillery compare`: B relative to A."""
    sa, sb = summarize(a), summarize(b)
    shared = None
    oa, ob = sa.layer_origin, sb.layer_origin
    if oa is not None and ob is not None:
        shared = sorted(set(oa) & set(ob))
    return {
        "a": {"path": str(sa.path), "parameters": sa.parameters, "sizeBytes": sa.size_bytes,
              "layers": sa.num_layers, "fromTeacherLayers": oa},
        "b": {"path": str(sb.path), "parameters": sb.parameters, "sizeBytes": sb.size_bytes,
              "layers": sb.num_layers, "fromTeacherLayers": ob},
        "compressionRatio": round(sa.parameters / sb.parameters, 4) if sb.parameters else None,
        "sizeRatio": round(sa.size_bytes / sb.size_bytes, 4) if sb.size_bytes else None,
        "sharedTeacherLayers": shared,
    }


def format_comparison(c: dict) -> str:
    a, b = c["a"], c["b"]
    lines = [
        f"{'':24}{'A':>16}{'B':>16}",
        f"{'parameters':24}{a['parameters']:>16,}{b['parameters']:>16,}",
        f"{'size (safetensors)':24}{a['sizeBytes']:>16,}{b['sizeBytes']:>16,}",
        f"{'layers':24}{a['layers'] if a['layers'] is not None else '-':>16}{b['layers'] if b['layers'] is not None else '-':>16}",
        f"compression ratio (A/B): {c['compressionRatio']}x parameters, {c['sizeRatio']}x bytes",
        f"A: {a['path']}  (teacher layers {a['fromTeacherLayers']})",
        f"B: {b['path']}  (teacher layers {b['fromTeacherLayers']})",
        f"shared teacher layers: {c['sharedTeacherLayers']}",
    ]
    return "\n".join(lines)
