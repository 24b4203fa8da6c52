"""One distillation run: open the output, build the run context, run the stages in order.

The stages (load, reuse_finished, teacher_outputs, select_layers, train, evaluate, export,
benchmark, decide, write) live in stages.py, each a small function over the RunContext
(run_context.py); what differs between tasks lives in tasks.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from distillery.api.job import DistillationJob
from distillery.api.result import RESULT_KEY, TrainerResult
from distillery.fingerprint import spec_hash, training_fingerprint
from distillery.store import Store, open_store
from distillery_trainer import distributed, preflight, stages, training
from distillery_trainer.output_dir import open_output
from distillery_trainer.progress import Progress, RankBoard, WorkerProgress
from distillery_trainer.run_context import RunContext
from distillery_trainer.stages import EVAL_BATCH, STAGES, now, onnx_parameter_count, stages_for
from distillery_trainer.tasks import for_task

__all__ = ["EVAL_BATCH", "STAGES", "onnx_parameter_count", "pick_device", "run", "run_main"]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def discard_previous_run(store) -> None:
    """--restart: forget checkpoints, cached teacher outputs and the result (ours only: the
    output store deletes only files Distillery wrote)."""
    store.delete_prefix("checkpoints/")
    store.delete_prefix("cache/")
    store.delete(RESULT_KEY)


def run(job: DistillationJob, *, restart: bool = False, progress: Progress | None = None,
        allow_nonempty_output: bool = False) -> TrainerResult | None:
    """The run's result; None on the ranks other than 0 of a distributed run (distributed.py),
    whose only part is training."""
    world = distributed.world_from_env()
    if not world.distributed:
        return run_main(job, restart=restart, progress=progress, allow_nonempty_output=allow_nonempty_output)
    preflight.check_spec(job)  # every rank: bad input fails each rank the same way, before any wait
    device = distributed.device_for(world)
    with distributed.process_group(world, device) as group_store:
        signal = distributed.RankSignal(world, device)
        board = RankBoard(group_store, world.rank, world.size)
        if not world.main:
            return run_worker(job, world, device, signal, board)
        progress = progress or Progress()
        progress.watch_peers(board)
        try:
            return run_main(job, restart=restart, progress=progress, allow_nonempty_output=allow_nonempty_output,
                            world=world, device=device, signal=signal)
        finally:
            progress.stop_watching_peers()  # the store goes with the group: a later write must not use it
            signal.send(go=False)  # releases the other ranks when rank 0 ended before training


def run_main(job: DistillationJob, *, restart: bool = False, progress: Progress | None = None,
             allow_nonempty_output: bool = False, world: distributed.World = distributed.SINGLE,
             device: torch.device | None = None, signal: distributed.RankSignal | None = None) -> TrainerResult:
    spec = job.spec
    preflight.check_spec(job)
    started = now()
    store = open_output(job, allow_nonempty=allow_nonempty_output)
    try:
        progress = progress or Progress(store)
        progress.store = store
        if restart:
            discard_previous_run(store)
        torch.manual_seed(spec.distillation.seed)
        work = Path(tempfile.mkdtemp(prefix="distillery-"))
        try:
            ctx = RunContext(job=job, store=store, progress=progress, device=device or pick_device(), work=work,
                             task=for_task(spec.teacher.task), fingerprint=training_fingerprint(spec),
                             spec_hash=spec_hash(spec), started=started, restart=restart, world=world,
                             signal=signal)
            for stage in stages_for(ctx.task):
                if stage is stages.train and signal is not None:
                    share_student(ctx, signal)
                stage(ctx)
                if ctx.result is not None:
                    break
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress.finish()
        return ctx.result
    finally:
        store.close()


def share_student(ctx: RunContext, signal: distributed.RankSignal) -> None:
    """Rank 0, before training: the student as a checkpoint the other ranks resume from (the
    run's own when it resumed, else one at step 0), then GO; DONE when training is over."""
    if ctx.state.finished:
        signal.send(go=False)
        return
    if ctx.resume_payload is None:
        ctx.resume_payload = training.fresh_payload(ctx.student, ctx.spec.distillation, len(ctx.train_data))
        ctx.checkpoints.save(ctx.state, ctx.student.state_dict(), ctx.resume_payload)
    signal.send(go=True)


def run_worker(job: DistillationJob, world: distributed.World, device: torch.device,
               signal: distributed.RankSignal, board: RankBoard | None = None) -> None:
    """A rank other than 0: the same inputs, its share of the teacher pass when rank 0 asks, then
    rank 0's student and teacher outputs read back from the store, then training on its share of
    every batch. It writes nothing to the store; its progress goes to the board."""
    spec = job.spec
    store = ReadOnlyStore(open_store(spec.output.uri, endpoint=spec.output.endpoint, region=spec.output.region),
                          world.rank)
    work = Path(tempfile.mkdtemp(prefix=f"distillery-rank{world.rank}-"))
    progress = WorkerProgress(board)
    try:
        ctx = RunContext(job=job, store=store, progress=progress, device=device, work=work,
                         task=for_task(spec.teacher.task), fingerprint=training_fingerprint(spec),
                         spec_hash=spec_hash(spec), started=now(), world=world)
        worker_stages(ctx, signal, progress)
        progress.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return None


def worker_stages(ctx: RunContext, signal: distributed.RankSignal, progress: WorkerProgress) -> None:
    """run_worker's part of the run, up to the end of training or rank 0's DONE."""
    stages.read_inputs(ctx)
    progress.waiting()
    message = signal.wait()
    if message == signal.TEACHER_PASS:
        progress.stage("teacher-outputs")
        stages.join_teacher_pass(ctx)
        progress.waiting()
        message = signal.wait()
    if message != signal.GO:
        return
    stages.find_checkpoint(ctx)
    if ctx.state is None:
        raise RuntimeError(f"rank {ctx.world.rank}: rank 0 said GO but left no checkpoint in "
                           f"{ctx.store.uri_for('checkpoints/')} to start from")
    stages.teacher_outputs(ctx)
    stages.select_layers(ctx)
    if ctx.resume_payload is None:
        raise RuntimeError(f"rank {ctx.world.rank}: the checkpoint rank 0 wrote does not load")
    stages.train(ctx)


class ReadOnlyStore:
    """The output store as the other ranks see it: read, never written (rank 0 owns the output)."""

    def __init__(self, inner: Store, rank: int):
        self._inner, self._rank = inner, rank

    def __getattr__(self, name: str):
        if name in ("write_bytes", "upload_file", "delete", "delete_prefix", "put_if"):
            raise AttributeError(f"rank {self._rank} tried to {name} the output store: only rank 0 writes (a bug)")
        return getattr(self._inner, name)
