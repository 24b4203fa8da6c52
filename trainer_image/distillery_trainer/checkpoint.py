"""Checkpoints in the store, so a killed run continues where it stopped.

Layout under the output prefix: checkpoints/step-000123/{student.safetensors,optimizer.pt} and
checkpoints/latest.json, written last, which names the complete one; older steps are removed
after that, so there is always one complete checkpoint.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from distillery_trainer.errors import InputError

LATEST = "checkpoints/latest.json"


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


class Checkpoints:
    def __init__(self, store, fingerprint: str):
        self.store = store
        self.fingerprint = fingerprint

    def latest(self) -> CheckpointState | None:
        if not self.store.exists(LATEST):
            return None
        raw = self.store.read_json(LATEST)
        state = CheckpointState(**raw["state"])
        if state.fingerprint != self.fingerprint:
            raise InputError(
                f"output.uri {self.store.uri_for('')} holds checkpoints of a different job spec; "
                "use a new output.uri, or --restart to discard them"
            )
        return state

    def load_weights(self, state: CheckpointState) -> tuple[dict, dict]:
        """(student state_dict, optimizer payload). Loads tensors only: nothing is unpickled."""
        folder = f"checkpoints/step-{state.global_step:08d}"
        weights = load_safetensors(self.store.read_bytes(f"{folder}/student.safetensors"))
        payload = torch.load(io.BytesIO(self.store.read_bytes(f"{folder}/optimizer.pt")),
                             weights_only=True, map_location="cpu")
        return weights, payload

    def save(self, state: CheckpointState, student_state: dict, optimizer_payload: dict) -> None:
        folder = f"checkpoints/step-{state.global_step:08d}"
        tensors = {k: v.detach().contiguous().cpu() for k, v in student_state.items()}
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
