"""Checkpoints in the store, so a killed run continues where it stopped.

Layout under the output prefix: checkpoints/step-000123/{student.safetensors,optimizer.pt} and
checkpoints/latest.json, written last, which names the complete one; older steps are removed
after that, so there is always one complete checkpoint.

What is read back is checked before it is used. A checkpoint of another spec (its fingerprint
differs) is the user's mistake and a clear error (use a new output or --restart). A checkpoint
trained on another teacher or other data (same paths, new contents), or one that is unreadable
or does not fit (layer list outside the model, tensor names or shapes that are not the
student's, non-finite weights, an optimizer state of another shape) is ignored with one log line
and training starts from scratch: it costs time, never a wrong model.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from distillery.store import StoreError
from distillery_trainer.errors import InputError

LATEST = "checkpoints/latest.json"


class CorruptCheckpoint(ValueError):
    """A checkpoint that cannot be used; the message says why, without any data values."""


@dataclass
class CheckpointState:
    fingerprint: str
    layers: list[int]
    layer_scores: list[float]
    epoch: int  # epoch in progress (0-based)
    step_in_epoch: int  # batches of that epoch already done
    global_step: int
    finished: bool = False
    history: list[dict] = field(default_factory=list)
    inputs: dict | None = None  # digests of the teacher and data trained on (see InputDigests)
    vocabulary: list[int] | None = None  # student.vocabulary: the kept token ids of the teacher's, sorted
    width: dict | None = None  # student.width: {"plan": kept heads/neurons per layer, "report": WidthReport}

    @classmethod
    def parse(cls, raw) -> CheckpointState:
        """From latest.json's "state"; raises CorruptCheckpoint on anything malformed."""
        try:
            state = cls(**raw)
        except TypeError:
            raise CorruptCheckpoint("latest.json does not hold a checkpoint state") from None
        counts = (state.epoch, state.step_in_epoch, state.global_step)
        if not (isinstance(state.fingerprint, str) and _is_int_list(state.layers) and state.layers
                and all(_is_int(v) and v >= 0 for v in counts) and isinstance(state.finished, bool)
                and isinstance(state.layer_scores, list) and isinstance(state.history, list)
                and (state.inputs is None or isinstance(state.inputs, dict))):
            raise CorruptCheckpoint("latest.json has fields of the wrong type")
        if state.layers != sorted(set(state.layers)) or state.layers[0] < 0:
            raise CorruptCheckpoint("its layer list is not increasing layer numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in state.layer_scores):
            raise CorruptCheckpoint("its layer scores are not finite numbers")
        if state.vocabulary is not None and not (
                _is_int_list(state.vocabulary) and state.vocabulary
                and state.vocabulary == sorted(set(state.vocabulary)) and state.vocabulary[0] >= 0):
            raise CorruptCheckpoint("its vocabulary is not a list of increasing token ids")
        if state.width is not None and not isinstance(state.width, dict):
            raise CorruptCheckpoint("its width structure is not an object")
        return state


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def check_fits(state: CheckpointState, weights: dict[str, torch.Tensor], student_state: dict[str, torch.Tensor],
               source_layers: int) -> None:
    """The checkpoint belongs to this student: layers inside the model it is cut from, the
    same tensor names and shapes, finite values. Raises CorruptCheckpoint."""
    if state.layers[-1] >= source_layers:
        raise CorruptCheckpoint(f"its layers go beyond the {source_layers} layers of the model")
    if set(weights) != set(student_state):
        raise CorruptCheckpoint("its tensor names are not the student's")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(student_state[name].shape):
            raise CorruptCheckpoint(f"tensor {name} has another shape than the student's")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CorruptCheckpoint(f"tensor {name} is not finite")


def tied_names(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """{alias: name} for tensors that share storage with an earlier one (tied input and output
    embeddings): safetensors stores each storage once."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in state_dict.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where in first:
            aliases[name] = first[where]
        else:
            first[where] = name
    return aliases


def fill_tied(weights: dict[str, torch.Tensor], student_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors plus the student's tied aliases, for load_state_dict."""
    filled = dict(weights)
    for alias, name in tied_names(student_state).items():
        if alias not in filled and name in filled:
            filled[alias] = filled[name]
    return filled


class Checkpoints:
    def __init__(self, store, fingerprint: str):
        self.store = store
        self.fingerprint = fingerprint

    def latest(self) -> CheckpointState | None:
        """The newest complete checkpoint's state, None when there is none.

        Raises InputError for another spec's checkpoint and CorruptCheckpoint for a bad one."""
        if not self.store.exists(LATEST):
            return None
        try:
            raw = self.store.read_json(LATEST)
        except StoreError as err:
            if "invalid JSON" not in str(err):
                raise  # the store's trouble (network, access) is not the checkpoint's
            raise CorruptCheckpoint("latest.json is not JSON") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("state"), dict):
            raise CorruptCheckpoint("latest.json does not hold a checkpoint state")
        state = CheckpointState.parse(raw["state"])
        if state.fingerprint != self.fingerprint:
            raise InputError(
                f"output.uri {self.store.uri_for('')} holds checkpoints of a different job spec; "
                "use a new output.uri, or --restart to discard them"
            )
        return state

    def load_weights(self, state: CheckpointState) -> tuple[dict, dict]:
        """(student state_dict, optimizer payload). Loads tensors only: nothing is unpickled."""
        folder = f"checkpoints/step-{state.global_step:08d}"
        for name in ("student.safetensors", "optimizer.pt"):
            if not self.store.exists(f"{folder}/{name}"):
                raise CorruptCheckpoint(f"{folder}/{name} is missing")
        try:
            weights = load_safetensors(self.store.read_bytes(f"{folder}/student.safetensors"))
        except Exception:  # noqa: BLE001 - safetensors raises its own error types
            raise CorruptCheckpoint(f"{folder}/student.safetensors is not a readable safetensors file") from None
        try:
            payload = torch.load(io.BytesIO(self.store.read_bytes(f"{folder}/optimizer.pt")),
                                 weights_only=True, map_location="cpu")
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - torch's unpickler refuses with many types
            raise CorruptCheckpoint(f"{folder}/optimizer.pt is not a readable optimizer state") from None
        if not isinstance(payload, dict) or not {"optimizer", "scheduler", "rng"} <= set(payload):
            raise CorruptCheckpoint(f"{folder}/optimizer.pt lacks the optimizer, scheduler or random state")
        return weights, payload

    def save(self, state: CheckpointState, student_state: dict, optimizer_payload: dict) -> None:
        folder = f"checkpoints/step-{state.global_step:08d}"
        aliases = tied_names(student_state)
        tensors = {k: v.detach().contiguous().cpu() for k, v in student_state.items() if k not in aliases}
        self.store.write_bytes(f"{folder}/student.safetensors", save_safetensors(tensors))
        buffer = io.BytesIO()
        torch.save(optimizer_payload, buffer)
        self.store.write_bytes(f"{folder}/optimizer.pt", buffer.getvalue())
        self.store.write_json(LATEST, {"step": folder, "state": asdict(state)})
        older = {key.split("/")[1] for key in self.store.list_keys("checkpoints/")
                 if key.startswith("checkpoints/step-") and not key.startswith(folder + "/")}
        for step in older:
            self.store.delete_prefix(f"checkpoints/{step}/")

    def clear(self) -> None:
        self.store.delete_prefix("checkpoints/")
