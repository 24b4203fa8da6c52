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
from distillery_trainer import preflight
from distillery_trainer.output_dir import open_output
from distillery_trainer.progress import Progress
from distillery_trainer.run_context import RunContext
from distillery_trainer.stages import EVAL_BATCH, STAGES, now, onnx_parameter_count, stages_for
from distillery_trainer.tasks import for_task

__all__ = ["EVAL_BATCH", "STAGES", "onnx_parameter_count", "pick_device", "run"]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def discard_previous_run(store) -> None:
    """--restart: forget checkpoints, cached teacher outputs and the result (ours only: the
    output store deletes only files Distillery wrote)."""
    store.delete_prefix("checkpoints/")
    store.delete_prefix("cache/")
    store.delete(RESULT_KEY)


def run(job: DistillationJob, *, restart: bool = False, progress: Progress | None = None,
        allow_nonempty_output: bool = False) -> TrainerResult:
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
            ctx = RunContext(job=job, store=store, progress=progress, device=pick_device(), work=work,
                             task=for_task(spec.teacher.task), fingerprint=training_fingerprint(spec),
                             spec_hash=spec_hash(spec), started=started, restart=restart)
            for stage in stages_for(ctx.task):
                stage(ctx)
                if ctx.result is not None:
                    break
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress.finish()
        return ctx.result
    finally:
        store.close()
