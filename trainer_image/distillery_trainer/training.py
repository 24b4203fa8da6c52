"""The healing step: train the extracted student against the teacher's cached outputs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from distillery.api.job import Distillation, HiddenLossType, Task
from distillery_trainer.checkpoint import Checkpoints, CheckpointState
from distillery_trainer.encode import Encoded
from distillery_trainer.losses import hidden_loss, kd_loss
from distillery_trainer.nets import Net
from distillery_trainer.progress import Progress
from distillery_trainer.teacher import TeacherOutputs, autocast


@dataclass
class TrainContext:
    student: Net
    data: Encoded
    teacher: TeacherOutputs  # aligned with `data`, computed once
    spec: Distillation
    task: Task
    device: torch.device
    checkpoints: Checkpoints
    state: CheckpointState
    progress: Progress


def linear_warmup_decay(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch depends only on (seed, epoch), so a resumed run replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout module's rate (in training mode torch then skips the random mask).

    The rate is module state, not config: a saved student keeps its configured dropout.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0


def step_loss(ctx: TrainContext, batch: dict, index: torch.Tensor) -> torch.Tensor:
    spec = ctx.spec
    out = ctx.student.outputs(batch)
    teacher_pooled = None if ctx.teacher.pooled is None else ctx.teacher.pooled[index].to(ctx.device)
    if ctx.task == Task.SENTENCE_EMBEDDING:
        # For embeddings the representation is the output: matching it is the main loss.
        kind = spec.hidden_loss.type if spec.hidden_loss.type != HiddenLossType.NONE else HiddenLossType.COSINE
        return hidden_loss(out.pooled.float(), teacher_pooled, kind)
    labels = None if ctx.data.labels is None else ctx.data.labels[index].to(ctx.device)
    loss = kd_loss(out.logits.float(), ctx.teacher.logits[index].to(ctx.device), labels,
                   spec.temperature, spec.alpha)
    # The hidden-state term needs matching widths (an ONNX teacher or a narrower student has none).
    if (spec.hidden_loss.type != HiddenLossType.NONE and teacher_pooled is not None
            and out.pooled.shape[-1] == teacher_pooled.shape[-1]):
        loss = loss + spec.hidden_loss.weight * hidden_loss(out.pooled.float(), teacher_pooled, spec.hidden_loss.type)
    return loss


def train(ctx: TrainContext, resume_payload: dict | None = None) -> list[dict]:
    """Runs the remaining epochs; returns per-epoch history (mean loss)."""
    spec, state, student = ctx.spec, ctx.state, ctx.student
    n = len(ctx.data)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    total_steps = max(1, steps_per_epoch * spec.epochs)
    student.to(ctx.device)
    no_decay = [p for name, p in student.named_parameters() if p.dim() < 2 or "norm" in name.lower()]
    decay = [p for name, p in student.named_parameters() if not (p.dim() < 2 or "norm" in name.lower())]
    # Fused AdamW: one kernel over all parameters. Measured on MiniLM (11.7M of its 17.4M
    # parameters are word embeddings): 0.016 s per step against 0.119 s for the default.
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.learning_rate, fused=ctx.device.type in ("cpu", "cuda"),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total_steps, spec.warmup_ratio))
    if resume_payload is not None:
        optimizer.load_state_dict(resume_payload["optimizer"])
        scheduler.load_state_dict(resume_payload["scheduler"])
        torch.set_rng_state(resume_payload["rng"])
    else:
        torch.manual_seed(spec.seed)

    last_save = time.monotonic()

    def save() -> None:
        nonlocal last_save
        payload = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "rng": torch.get_rng_state()}
        ctx.checkpoints.save(state, student.state_dict(), payload)
        last_save = time.monotonic()

    def checkpoint_due() -> bool:
        every = spec.checkpoint_every_steps
        return bool(every and state.global_step % every == 0) or \
            time.monotonic() - last_save >= spec.checkpoint_every_seconds

    history = list(state.history)
    ctx.progress.open_bar(total_steps, "distilling", initial=state.global_step)
    for epoch in range(state.epoch, spec.epochs):
        student.train()
        if spec.disable_dropout:
            disable_dropout(student)
        order = epoch_order(n, spec.seed, epoch)
        # Loss is summed on the device and read once per epoch: no host sync per step.
        loss_sum = torch.zeros((), device=ctx.device)
        steps = 0
        for step in range(state.step_in_epoch, steps_per_epoch):
            index = order[step * spec.batch_size:(step + 1) * spec.batch_size]
            batch = ctx.data.batch(index, ctx.device)
            with autocast(ctx.device):
                loss = step_loss(ctx, batch, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            steps += 1
            state.global_step += 1
            state.step_in_epoch = step + 1
            ctx.progress.tick(epoch=f"{epoch + 1}/{spec.epochs}")
            ctx.progress.fraction(state.global_step / total_steps, epoch + 1, spec.epochs)
            if state.step_in_epoch < steps_per_epoch and checkpoint_due():
                save()
        mean_loss = float(loss_sum) / max(1, steps)
        history.append({"epoch": epoch + 1, "loss": round(mean_loss, 6), "steps": steps})
        ctx.progress.log(f"epoch {epoch + 1}/{spec.epochs}: mean loss {mean_loss:.4f}")
        state.epoch, state.step_in_epoch, state.history = epoch + 1, 0, history
        if epoch + 1 == spec.epochs or checkpoint_due():  # the last one always: a rerun skips training
            save()
    ctx.progress.close_bar()
    state.finished = True
    if spec.epochs == 0 or state.global_step == 0:
        save()
    return history
