"""Read-only probes on a real `distillery run`: where training ran, in which dtype, and which
onnxruntime providers each session really got.

The probes wrap the trainer's own functions and record what they see; they never change an
argument or a return value, so the run is the run `distillery run` does without them.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SessionRecord:
    """One onnxruntime.InferenceSession the trainer created."""

    model: str
    requested: list[str]
    used: list[str]
    stage: str  # "latency" inside measure_latencies, "other" elsewhere (round trip, ONNX teacher)


@dataclass
class AutocastRecord:
    """The autocast state the trainer's own context manager set up, once per distinct state."""

    where: str  # "training" (the healing steps) or "outputs" (torch_outputs: teacher outputs, student evaluation)
    device: str
    enabled: bool
    dtype: str
    count: int = 0


@dataclass
class Records:
    sessions: list[SessionRecord] = field(default_factory=list)
    autocast: dict[tuple, AutocastRecord] = field(default_factory=dict)
    # dtype and device of the first Linear layer's output in the first training step.
    train_linear: dict | None = None
    stage: str = "other"

    def latency_sessions(self) -> list[SessionRecord]:
        return [s for s in self.sessions if s.stage == "latency"]

    def as_dict(self) -> dict:
        return {
            "sessions": [vars(s) for s in self.sessions],
            "autocast": [vars(a) for a in self.autocast.values()],
            "train_linear": self.train_linear,
        }


def install() -> Records:
    """Wraps onnxruntime.InferenceSession, the trainer's autocast and its training step."""
    import onnxruntime as ort
    import torch

    from distillery_trainer import stages, teacher, training

    records = Records()

    original_init = ort.InferenceSession.__init__

    @functools.wraps(original_init)
    def init(self, path_or_bytes, sess_options=None, providers=None, *args, **kwargs):
        original_init(self, path_or_bytes, sess_options, providers, *args, **kwargs)
        model = Path(path_or_bytes).name if isinstance(path_or_bytes, (str, Path)) else "<bytes>"
        requested = [p if isinstance(p, str) else p[0] for p in (providers or [])]
        records.sessions.append(SessionRecord(model, requested, list(self.get_providers()), records.stage))

    ort.InferenceSession.__init__ = init

    original_measure = stages.measure_latencies  # the benchmark stage calls it by this name

    @functools.wraps(original_measure)
    def measure(*args, **kwargs):
        records.stage = "latency"
        try:
            return original_measure(*args, **kwargs)
        finally:
            records.stage = "other"

    stages.measure_latencies = measure

    def recording_autocast(where: str, original):
        @contextlib.contextmanager
        def wrapped(device):
            with original(device) as ctx:
                kind = torch.device(device).type
                state = (where, kind, torch.is_autocast_enabled(kind), str(torch.get_autocast_dtype(kind)))
                rec = records.autocast.setdefault(state, AutocastRecord(*state))
                rec.count += 1
                yield ctx

        return wrapped

    # Each module bound `autocast` by name, so each binding is wrapped where it is looked up.
    training.autocast = recording_autocast("training", training.autocast)
    teacher.autocast = recording_autocast("outputs", teacher.autocast)

    original_step = training.step_loss

    @functools.wraps(original_step)
    def step_loss(ctx, batch, index):
        if records.train_linear is None:
            linear = next((m for m in ctx.student.modules() if isinstance(m, torch.nn.Linear)), None)
            if linear is not None:
                handle = None

                def hook(module, inputs, output):
                    records.train_linear = {"dtype": str(output.dtype), "device": str(output.device),
                                            "weight_device": str(module.weight.device)}
                    handle.remove()

                handle = linear.register_forward_hook(hook)
        return original_step(ctx, batch, index)

    training.step_loss = step_loss
    return records
