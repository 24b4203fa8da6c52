"""Data-parallel healing across processes started by torchrun (torch.distributed and DDP).

The batch rule: `distillation.batchSize` is the global batch. Every optimizer step takes the same
rows at any world size (an epoch's shuffle depends only on seed and epoch); process r of W trains
on rows r, r+W, r+2W, ... of each batch, its mean loss weighted by its share of the batch, and DDP
averages the gradients, so each step's gradient is the single-process one up to the order of
float sums. The learning rate and its schedule count global steps, so nothing is rescaled.

The roles: rank 0 runs the whole pipeline. It claims the output, reads the teacher outputs from
the cache or has every rank compute a share of them (sent to rank 0 in chunks and written to
disk as they arrive; rank 0 writes the cache),
computes the layer ranking, writes progress, checkpoints and artifacts, and evaluates, exports and
benchmarks once. Every other rank loads the same inputs, computes its share of the teacher pass
when asked, waits until rank 0 has a student, reads that student back through a checkpoint (the
verified resume path) and the teacher outputs through the cache, trains its share of every batch,
and stops. Nothing but rank 0 writes to the store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.nets import Net
from distillery_trainer.outputs import OutputWriter, TeacherOutputs

# How long a rank waits in a collective, above all while rank 0 computes the layer ranking and an
# ensemble's outputs alone, or checks cached teacher outputs; a large dataset can take this long.
DEFAULT_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def _env_int(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment: {name}={raw!r} is not a whole number (set by torchrun)") from None


def world_from_env(env=os.environ) -> World:
    """The world torchrun describes in the environment; one process when it describes none."""
    size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise InputError(f"environment: RANK={rank} and WORLD_SIZE={size} do not describe a process group")
    return World(rank, size, local_rank)


def device_for(world: World) -> torch.device:
    """One GPU per process (LOCAL_RANK picks it), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[object]:
    """torch.distributed set up for the run (NCCL between GPUs, gloo on CPUs), torn down after;
    yields the group's key-value store (this attempt's part of it), where the ranks publish their
    progress (progress.RankBoard)."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=float(os.environ.get("DISTILLERY_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    store, _, _ = next(dist.rendezvous("env://", rank=world.rank, world_size=world.size, timeout=timeout))
    # torchrun keeps one store across the group's restarts: without a prefix per attempt, a
    # restarted rank reads the dead group's addresses and cannot connect (seen here after a rank
    # was killed: gloo's "Connection refused", or a hang).
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    attempt_store = dist.PrefixStore(f"distillery/attempt-{attempt}/", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=attempt_store,
                            rank=world.rank, world_size=world.size, timeout=timeout)
    try:
        yield attempt_store
    finally:
        dist.destroy_process_group()


class RankSignal:
    """What rank 0 tells the other ranks, in order: TEACHER_PASS when the teacher's outputs must be
    computed (every rank takes a share of the rows, shared_outputs), then once GO when there is
    training to share, or DONE when there is not (an earlier result stands, training already
    finished, or rank 0 failed)."""

    DONE, GO, TEACHER_PASS = 0, 1, 2

    def __init__(self, world: World, device: torch.device):
        self.world, self.device, self.ended = world, device, False

    def _broadcast(self, value: int) -> int:
        import torch.distributed as dist

        flag = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.broadcast(flag, src=0)
        return int(flag.item())

    def send_teacher_pass(self) -> None:
        if not self.ended:
            self._broadcast(self.TEACHER_PASS)

    def send(self, go: bool) -> None:
        if not self.ended:
            self.ended = True
            self._broadcast(self.GO if go else self.DONE)

    def wait(self) -> int:
        """Blocks until rank 0 sends; returns the message."""
        return self._broadcast(self.DONE)


def share_range(rows: int, world: World) -> range:
    """This rank's contiguous share of `rows` rows (the first rows % W ranks take one more), so the
    shares in rank order are the rows in order."""
    base, extra = divmod(rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (1 if world.rank < extra else 0))


# Rows of outputs a rank sends rank 0 at a time: rank 0 holds one chunk in memory, never a share.
GATHER_CHUNK_ROWS = 1024


def shared_outputs(compute: Callable[[Encoded, Path], TeacherOutputs], splits: list[Encoded], world: World,
                   work: Path, chunk_rows: int = GATHER_CHUNK_ROWS) -> list[TeacherOutputs] | None:
    """The teacher's outputs on each split, every rank computing its share_range of each (written
    under `work` by `compute`) and sending it to rank 0 chunk by chunk, which writes them in row
    order into memory-mapped files under `work`: the whole outputs on rank 0 (on disk, so rows
    never bound by memory); None elsewhere.

    First every rank says whether its share failed (every rank joins, so none is left waiting in a
    send), then rank 0 raises the first failure, an InputError staying one."""
    import torch.distributed as dist

    failure: Exception | None = None
    mine: list[TeacherOutputs | None] = []
    try:
        for i, data in enumerate(splits):
            share = share_range(len(data), world)
            rows = data.rows(torch.arange(share.start, share.stop)) if len(share) else None
            mine.append(compute(rows, work / f"share-{i}") if rows is not None else None)
    except Exception as err:  # noqa: BLE001 - rank 0 raises it once every rank has reported
        failure = err
    reports: list = [None] * world.size
    dist.all_gather_object(reports, None if failure is None else
                           (isinstance(failure, InputError), f"{type(failure).__name__}: {failure}"))
    if any(report is not None for report in reports):
        if not world.main:
            return None  # rank 0 reports it and ends the run
        if failure is not None:
            raise failure
        rank, (invalid, message) = next((r, report) for r, report in enumerate(reports) if report is not None)
        raise (InputError if invalid else RuntimeError)(f"rank {rank}, computing its share of the teacher's "
                                                        f"outputs: {message}")
    if not world.main:
        for part in mine:
            for chunk in _chunks(part, chunk_rows):
                dist.send_object_list([chunk], dst=0)
        return None
    return [_receive_split(len(data), mine[i], world, work / f"gathered-{i}", chunk_rows)
            for i, data in enumerate(splits)]


def _chunks(part: TeacherOutputs | None, chunk_rows: int) -> Iterator[TeacherOutputs]:
    rows = 0 if part is None else len(part)
    for start in range(0, rows, chunk_rows):
        yield part.rows(torch.arange(start, min(start + chunk_rows, rows)))


def _receive_split(rows: int, own: TeacherOutputs | None, world: World, folder: Path,
                   chunk_rows: int) -> TeacherOutputs:
    """Rank 0: one split's outputs, its own share then each rank's in rank order (the rows in order),
    written as they arrive."""
    import torch.distributed as dist

    writer = OutputWriter(folder, rows)
    for rank in range(world.size):
        if rank == 0:
            for chunk in _chunks(own, chunk_rows):
                writer.add(chunk)
            continue
        expected = len(share_range(rows, replace(world, rank=rank)))
        for _ in range(0, expected, chunk_rows):
            box: list = [None]
            dist.recv_object_list(box, src=rank)
            writer.add(box[0])
    return writer.finish()


def shard(index: torch.Tensor, world: World) -> tuple[torch.Tensor, float]:
    """This rank's rows of one global batch and the weight of its mean loss (its share of the
    batch times the world size, so DDP's average of the ranks' gradients is the batch's).

    A rank left without rows (a last batch smaller than the world) trains on one row with weight 0:
    every rank must run each step for DDP's gradient exchange."""
    if not world.distributed:
        return index, 1.0
    rows = index[world.rank::world.size]
    if len(rows) == 0:
        return index[:1], 0.0
    return rows, len(rows) * world.size / len(index)


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The ranks' values averaged (the same tensor on one process)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world.size


class _Forward(nn.Module):
    """DDP synchronises the gradients of what runs through forward(); the student's is outputs()."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net

    def forward(self, batch: dict):
        return self.net.outputs(batch)


def forward_for(student: Net, world: World, device: torch.device):
    """The student's outputs(batch), wrapped in DDP when there are several ranks. DDP starts by
    copying rank 0's weights to every rank, so all ranks begin from the same student."""
    if not world.distributed:
        return student.outputs
    from torch.nn.parallel import DistributedDataParallel

    # Some parameters never take part in the loss (a sentence encoder's pooler): DDP must look for
    # them each step instead of waiting for their gradients (without it the quickstart job failed
    # with "Expected to have finished reduction"; static_graph=True ran but changed the losses).
    return DistributedDataParallel(_Forward(student), device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)
