"""Layer-importance measurements kept beside the teacher-output cache, so the jobs (and search
trials) that cut one teacher on one dataset measure its layers once.

What is kept: block scores per layer, a decoder's block distances per dropped width, and the greedy
ablation path (each layer's divergence alone and the removals in order: the path does not depend on
how many layers are kept, so one path serves every depth). An entry is keyed by the digests of the
teacher (or student.base) and train data and by every setting the measurement depends on, and is
checked for shape and finiteness when read; a tampered entry can only make a job keep other layers,
whose student is then measured like any other.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from distillery.api.job import DistillationJobSpec, ImportanceMetric
from distillery.api.result import InputDigests
from distillery.store import Store, StoreError
from distillery_trainer.extraction import Removals

FORMAT = 1


def ranking_key(spec: DistillationJobSpec, digests: InputDigests, protect_ends: bool) -> str:
    """What the measurements depend on; settings that only shape training (alpha, learning rate,
    epochs, keepLayers) are left out, so trials that vary them share one entry."""
    s, d = spec.student, spec.distillation
    parts = [str(FORMAT), spec.teacher.format.value, spec.teacher.task.value, digests.teacher, digests.train,
             digests.base or "-", s.importance_metric.value, f"calibration={s.calibration_batches}",
             f"batch={d.batch_size}"]
    if s.importance_metric == ImportanceMetric.ABLATION:  # the divergence is taken at T (and top-k for LMs)
        parts += [f"T={d.temperature!r}", f"k={d.top_k}", f"protect={protect_ends}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _finite_floats(value: Any, length: int) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _layer_order(value: Any, num_layers: int) -> bool:
    return (isinstance(value, list) and len(set(value)) == len(value) < num_layers
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_layers for v in value))


class RankingMemo:
    """The entry of one teacher, dataset and setting: read once, written back when it grew."""

    def __init__(self, store: Store, path: str, key: str, num_layers: int, log) -> None:
        self.store, self.path, self.key, self.num_layers, self.log = store, path, key, num_layers, log
        self.entries: dict[str, Any] = {}
        self.reused: list[str] = []
        self.changed = False
        self._read()

    @classmethod
    def open(cls, store: Store, prefix: str, key: str, num_layers: int, log) -> RankingMemo:
        return cls(store, f"{prefix}layer-ranking-{key}.json", key, num_layers, log)

    def _read(self) -> None:
        if not self.store.exists(self.path):
            return
        try:
            doc = self.store.read_json(self.path)
        except StoreError as err:
            self.log(f"ignoring the layer ranking {self.store.uri_for(self.path)}: {err}")
            return
        if not (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("key") == self.key
                and doc.get("numLayers") == self.num_layers and isinstance(doc.get("entries"), dict)):
            self.log(f"ignoring the layer ranking {self.store.uri_for(self.path)}: not an entry for this teacher")
            return
        for name, value in doc["entries"].items():
            if self._valid(name, value):
                self.entries[name] = value
            else:
                self.log(f"ignoring entry {name!r} of the layer ranking {self.store.uri_for(self.path)}: malformed")

    def _valid(self, name: str, value: Any) -> bool:
        n = self.num_layers
        if name == "scores":
            return _finite_floats(value, n)
        if name.startswith("distances/") and name.removeprefix("distances/").isdigit():
            width = int(name.removeprefix("distances/"))
            return 0 < width < n and _finite_floats(value, n - width + 1)
        if name == "ablation":
            return isinstance(value, dict) and _finite_floats(value.get("alone"), n) and _layer_order(
                value.get("order"), n)
        return False

    def get(self, name: str) -> Any | None:
        if name in self.entries:
            self.reused.append(name)
        return self.entries.get(name)

    def put(self, name: str, value: Any) -> None:
        if self.entries.get(name) != value:
            self.entries[name] = value
            self.changed = True

    # Typed helpers for the two kinds of measurement.
    def scores(self, name: str, measure) -> list[float]:
        """Per-layer (or per-start) scores under `name`, measured by `measure()` when not kept."""
        found = self.get(name)
        if found is not None:
            return list(found)
        value = measure()
        self.put(name, value)
        return value

    def removals(self) -> Removals | None:
        found = self.get("ablation")
        return Removals(list(found["alone"]), list(found["order"])) if found else None

    def keep_removals(self, removals: Removals) -> None:
        if not removals.alone:  # nothing was measured (every layer kept): an empty path is no ranking
            return
        self.put("ablation", {"alone": list(removals.alone), "order": list(removals.order)})

    def save(self) -> None:
        if not self.changed:
            return
        self.store.write_json(self.path, {"format": FORMAT, "key": self.key, "numLayers": self.num_layers,
                                          "entries": self.entries})
        self.changed = False


class NoMemo:
    """Measure every time (no cache store, or a source model that is not the teacher's)."""

    reused: list[str] = []

    def scores(self, name: str, measure) -> list[float]:
        return measure()

    def removals(self) -> Removals | None:
        return None

    def keep_removals(self, removals: Removals) -> None:
        pass

    def save(self) -> None:
        pass


NO_MEMO = NoMemo()
