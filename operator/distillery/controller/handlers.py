"""kopf wiring: observe a DistillationJob, decide (decide.py, pure), execute the actions.

Rules kept here: the spec is never written (all we learn goes to status), handlers return
nothing, every step is idempotent (deterministic names, 409 is success), and everything is
recomputed from the cluster's state after a restart.

All handlers are coroutines: they run in kopf's event loop, the only place where kopf's indexes
are consistent, and hand blocking work to threads (Kubernetes calls to the context's API pool, store
reads via the context's StoreIO, frontier passes via its Debouncer, fed snapshots). Shared state
lives in one OperatorContext, passed as kopf's memo; `register()` puts the handlers in a registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from distillery.api.base import GROUP, VERSION
from distillery.api.load import SpecError
from distillery.api.result import PROGRESS_KEY, RESULT_KEY
from distillery.controller import decide, metrics, naming, registry, search_handlers
from distillery.controller.context import OperatorContext, read_json_document
from distillery.controller.decide import (
    CreateJob,
    CreateService,
    DeleteJob,
    Event,
    ForgetStore,
    Observed,
    ParentSeen,
    PatchStatus,
    ReadStore,
    RegisterStudent,
    Retry,
    SecretSeen,
)
from distillery.controller.trainer_job import for_generation, watched_view
from distillery.store import StoreError

log = logging.getLogger(__name__)

JOBS = "distillationjobs"
STUDENTS = "studentmodels"
# How long a job's first tick waits for kopf's finalizer to show in the live body (it is added
# while the tick starts; a status write before then makes kopf's resourceVersion-tested
# finalizer patch fail with 422 and be retried). Within a second normally; bounded under load.
FINALIZER_WAIT_S = 3.0
# How long a tick waits for the store read it just started: a healthy store answers well within
# it (so a finished job is recorded on the same tick), a hanging one costs the tick only this.
STORE_WAIT_S = 1.0


# ----------------------------------------------------------------------------- startup


async def configure(settings: kopf.OperatorSettings, memo: OperatorContext, **_) -> None:
    prefix = memo.settings.annotation_prefix
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration")
    settings.persistence.finalizer = memo.settings.finalizer
    settings.posting.level = logging.WARNING  # our own events carry the milestones
    settings.watching.server_timeout = 120
    metrics.serve(memo.settings.metrics_port)


async def start_frontier(memo: OperatorContext, students_by_group, **_) -> None:
    # Startup handlers get the (still empty) index objects that kopf then keeps filling.
    memo.frontier.start("frontier")
    memo.tasks.append(asyncio.create_task(resync_loop(memo, students_by_group), name="frontier-resync"))


async def stop_frontier(memo: OperatorContext, **_) -> None:
    for task in memo.tasks:
        task.cancel()
    memo.frontier.stop()
    memo.store_io.shutdown()
    memo.api_pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------- indexes


async def students_by_group(body, namespace, labels, **_):
    """StudentModels by (namespace, frontier group), as much of each as the frontier needs."""
    group = labels.get(naming.LABEL_GROUP_KEY)
    return {(namespace, group): registry.indexed(body)} if group else {}  # {}: drop a removed label's entry


async def trainer_jobs(body, namespace, name, **_):
    """Trainer Jobs by (namespace, name), as much of each as following it needs."""
    return {(namespace, name): watched_view(body)}


def group_snapshot(index, key: tuple[str, str], gone: set[str], heal: bool = False) -> tuple[list[Mapping], bool]:
    """A copy of one group's live models (and whether the pass heals). Call it in the event loop
    only (kopf changes its indexes there, so nothing changes them while this runs)."""
    return registry.live(list(index.get(key, ())), gone), heal


# ----------------------------------------------------------------------------- observing


def observed(body, meta, status) -> Observed:
    return Observed(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                    generation=meta["generation"],
                    body={"apiVersion": body["apiVersion"], "kind": body["kind"], "spec": dict(body["spec"])},
                    status=dict(status or {}))


async def start_actions(ctx: OperatorContext, obs: Observed, retry: int) -> list:
    """decide_start with what it needs: the job's Secret (metadata only is used), its other
    generations' trainer Jobs and the StudentModel it continues (its spec only is used)."""
    if decide.finished_generation(obs):
        return []
    secret, others, parent = None, [], None
    try:
        job = decide.parse_job(obs)
    except SpecError:
        job = None
    if job is not None:
        name = decide.secret_name(job, ctx.settings)
        if name:
            found = await ctx.api(ctx.kube.read_secret, obs.namespace, name)
            secret = SecretSeen(name, found[0] if found else None)
        base = job.spec.student.base
        if base is not None and base.student_model is not None:
            model = await ctx.api(ctx.kube.read_student_model, obs.namespace, base.student_model)
            parent = ParentSeen(base.student_model, None if model is None else model.get("spec") or {})
        if obs.generation > 1:  # the first generation has no older Jobs (a recreated job has a new uid)
            listed = await ctx.api(ctx.kube.list_jobs, obs.namespace, f"{naming.LABEL_JOB}={obs.name}")
            others = [j["metadata"]["name"] for j in listed
                      if (j["metadata"].get("labels") or {}).get(naming.LABEL_GENERATION) != str(obs.generation)]
    return decide.decide_start(obs, ctx.settings, secret, others, retry, parent)


async def observe_trainer(ctx: OperatorContext, namespace: str, name: str, index) -> dict | None:
    """The trainer Job as the watch last saw it; from a GET when the index has no single entry for
    it (the watch may lag a Job just created, and a missing Job gets recreated, so its absence is
    confirmed first), and once per trainer_recheck_s (a DELETED event lost while the watch
    reconnected would leave a stale entry behind)."""
    seen = list(index.get((namespace, name), ()))  # in the event loop: a consistent copy
    key, now = (namespace, name), time.monotonic()
    if len(seen) == 1 and now - ctx.trainer_checked.setdefault(key, now) < ctx.settings.trainer_recheck_s:
        return seen[0]
    ctx.trainer_checked[key] = now
    return await ctx.api(ctx.kube.read_job, namespace, name)


# ----------------------------------------------------------------------------- executing


def _api_trouble(err: ApiException, what: str) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"{what}: the API server answered {err.status} {err.reason}", delay=10)


async def execute(ctx: OperatorContext, obs: Observed, body, patch, actions: list) -> None:
    """Run the actions: cluster writes first, then the status (kopf patches it after the handler,
    also when the handler raises, so a status never claims a write that failed), then Events."""
    for action in actions:
        try:
            if isinstance(action, CreateJob):
                # No Event: the Succeeded condition (reason TrainerJobCreated) and status.trainerJob
                # say it, and an Event per job would be one more write at every scale.
                if await ctx.api(ctx.kube.create_job, action.manifest):
                    log.info("created trainer Job %s", action.manifest["metadata"]["name"])
            elif isinstance(action, CreateService):
                if await ctx.api(ctx.kube.create_service, action.manifest):
                    log.info("created worker Service %s", action.manifest["metadata"]["name"])
            elif isinstance(action, DeleteJob):
                await ctx.api(ctx.kube.delete_job, obs.namespace, action.name)
                log.info("deleted trainer Job %s of another generation", action.name)
            elif isinstance(action, RegisterStudent):
                await ctx.api(ctx.kube.create_student_model, action.body)
        except ApiException as err:
            if err.status in (400, 422) and isinstance(action, CreateJob | CreateService):
                what = "trainer Job" if isinstance(action, CreateJob) else "worker Service"
                reason, message = "TrainerJobRejected", f"the API server refused the {what}: {err.reason}"
                patch.status.update(decide.fail(obs, reason, message)[0].patch.to_wire())
                raise kopf.PermanentError(message) from None
            raise _api_trouble(err, type(action).__name__) from None
    retry = None
    for action in actions:
        if isinstance(action, PatchStatus):
            wire = action.patch.to_wire()
            patch.status.update(wire)
            phase = action.patch.phase
            if phase:
                processes = wire.get("worldSize") or obs.status.get("worldSize")
                metrics.set_phase(f"{obs.namespace}/{obs.name}", phase, processes, wire.get("progress"))
            if phase in decide.FINAL:
                ctx.finished[obs.uid] = obs.generation
                ctx.progress_written.pop(obs.uid, None)
            elif phase == "Running":
                ctx.progress_written[obs.uid] = (obs.generation, wire.get("progress"))
            if phase == "Succeeded":
                metrics.STUDENTS.labels("accepted" if action.patch.status.accepted else "rejected").inc()
            elif phase == "Failed":
                metrics.STUDENTS.labels("failed").inc()
        elif isinstance(action, Event):
            # Not kopf.info: posting.level keeps handler logs out of Events.
            kopf.event(body, type="Warning" if action.warning else "Normal", reason=action.reason,
                       message=action.message)
        elif isinstance(action, ForgetStore):
            forget_job(ctx, obs.uid, obs.namespace, obs.body)
        elif isinstance(action, Retry):
            retry = action
    if retry is not None:
        raise kopf.TemporaryError(retry.message, delay=retry.delay)


def forget_job(ctx: OperatorContext, uid: str, namespace: str, body: Mapping | None = None,
               deleted: bool = False) -> None:
    """Drop what was kept for a job's store (it finished or is gone); all of it once it is deleted."""
    ctx.store_io.forget(lambda job: job[0] == uid)
    ctx.started.pop(uid, None)
    if deleted:
        ctx.finished.pop(uid, None)
        ctx.progress_written.pop(uid, None)
    trainer = ((body or {}).get("status") or {}).get("trainerJob")
    if trainer:
        ctx.trainer_checked.pop((namespace, trainer), None)


def submit_read(ctx: OperatorContext, obs: Observed, kind: str):
    """Start a store read for this generation (None when one of its reads is in flight)."""
    job = for_generation(decide.parse_job(obs), obs.generation)

    def read(store):
        if kind == decide.RESULT:
            return read_json_document(store, RESULT_KEY)
        try:
            return read_json_document(store, PROGRESS_KEY)
        except StoreError as err:
            if str(err).startswith("not found"):
                return None  # the trainer has not written any yet
            raise

    return ctx.store_io.submit((obs.uid, obs.generation), kind, lambda: ctx.open_job_store(job), read)


# ----------------------------------------------------------------------------- DistillationJob


def has_work(status, meta, **_) -> bool:
    """A job's one timer runs while its current generation is not started or not finished. kopf
    keeps its finalizer on the job only meanwhile, so a finished job can be deleted without a
    running operator."""
    return not (status.get("observedGeneration") == meta.get("generation") and status.get("phase") in decide.FINAL)


async def finalizer_in_place(meta, finalizer: str, wait_s: float = FINALIZER_WAIT_S) -> None:
    """Wait (bounded) until kopf's finalizer shows in `meta`, a live view of the job that kopf
    updates from the watch while the handler runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while finalizer not in (meta.get("finalizers") or ()) and loop.time() < deadline:
        await asyncio.sleep(0.05)


def not_started(obs: Observed) -> bool:
    return obs.status.get("observedGeneration") != obs.generation or not obs.status.get("trainerJob")


async def tick(body, meta, status, patch, retry, memo: OperatorContext, trainer_jobs, students_by_group,
               **_) -> None:
    """The job's level-triggered loop (a kopf timer, first run at once): start the current
    generation if it is not started, else follow its trainer. One handler for the job's whole life,
    so nothing races to create its Job, and kopf keeps no annotations on it."""
    obs = observed(body, meta, status)
    if not_started(obs):
        if memo.started_recently(obs.uid, obs.generation):
            return  # started by an earlier tick; the watch has not brought that status back yet
        await finalizer_in_place(meta, memo.settings.finalizer)
        with metrics.observed("reconcile"):
            actions = await start_actions(memo, obs, retry)
            await execute(memo, obs, body, patch, actions)
            if decide.wants(actions, CreateJob):
                memo.note_started(obs.uid, obs.generation)
        return
    with metrics.observed("follow"):
        await follow_trainer(memo, obs, body, patch, trainer_jobs, students_by_group)


async def follow_trainer(ctx: OperatorContext, obs: Observed, body, patch, jobs_index, students_index) -> None:
    if ctx.finished.get(obs.uid) == obs.generation:
        return  # finished by an earlier tick; the watch has not brought that status back yet
    name = obs.status.get("trainerJob")
    trainer = await observe_trainer(ctx, obs.namespace, name, jobs_index)
    if trainer is None:  # deleted behind our back: run this generation again
        again = replace(obs, status={**obs.status, "observedGeneration": None})
        await execute(ctx, obs, body, patch, await start_actions(ctx, again, 0))
        return
    try:
        job = decide.parse_job(obs)
    except SpecError as err:  # valid when started; only a changed schema gets here
        await execute(ctx, obs, body, patch, decide.fail(obs, "InvalidSpec", str(err)))
        return
    registered = None
    if job.spec.targets.must_improve_frontier:
        registered, _ = group_snapshot(students_index, (obs.namespace, decide.frontier_group_of(job)), ctx.gone)
    done = decide.job_condition(trainer, "Complete") or decide.job_condition(trainer, "Failed")
    pods = await ctx.api(ctx.kube.job_pods, obs.namespace, name) if done else None

    def decision() -> list:
        key = (obs.uid, obs.generation)
        generation, written = ctx.progress_written.get(obs.uid, (None, None))
        return decide.decide_follow(obs, ctx.settings, trainer, pods, ctx.store_io.latest(key, decide.PROGRESS),
                                    ctx.store_io.latest(key, decide.RESULT), registered,
                                    written if generation == obs.generation else None)

    actions = decision()
    reads = decide.wants(actions, ReadStore)
    if reads:
        future = submit_read(ctx, obs, reads[0].kind)
        if future is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), STORE_WAIT_S)
            if future.done():
                actions = decision()
    await execute(ctx, obs, body, patch, actions)


async def job_event(event, meta, memo: OperatorContext, body, **_) -> None:
    """A deleted job: its trainer Job and pods go with the owner reference; our caches go here."""
    if event.get("type") == "DELETED":
        metrics.set_phase(f"{meta['namespace']}/{meta['name']}", None)
        forget_job(memo, meta["uid"], meta["namespace"], body, deleted=True)


# ----------------------------------------------------------------------------- StudentModel


def write_frontier(ctx: OperatorContext, key: tuple[str, str], snapshot: tuple[list[Mapping], bool]) -> None:
    """One frontier pass over one group's models (a snapshot): patch the statuses that changed.
    Runs in the debouncer's thread. A status this operator already wrote is not written again
    because the snapshot predates the write, except on a resync pass (`heal`), which also
    repairs statuses edited by hand."""
    models, heal = snapshot
    with metrics.observed("frontier"):
        for name, wanted in registry.frontier_statuses(list(models)).items():
            current = next(m.get("status") or {} for m in models if m["metadata"]["name"] == name)
            if all(current.get(k) == v for k, v in wanted.items()):
                continue
            if not heal and ctx.frontier_written.get((key[0], name)) == wanted:
                continue
            ctx.kube.patch_student_model_status(key[0], name, wanted)
            ctx.frontier_written[(key[0], name)] = wanted


async def student_event(event, body, namespace, labels, memo: OperatorContext, students_by_group, **_) -> None:
    """Arrivals, departures and spec edits recompute their group, once per burst (debounced).

    A watch handler, not create/resume handlers: kopf then keeps no state on StudentModels (no
    annotation or finalizer patches), and its initial LIST still brings every model after a restart.
    kopf updates its indexes before it calls this, so the snapshot includes this event.
    """
    group = labels.get(naming.LABEL_GROUP_KEY)
    if event.get("type") == "DELETED":
        memo.frontier_written.pop((namespace, body["metadata"]["name"]), None)
    if group and registry.changes_frontier(event.get("type"), body):
        key = (namespace, group)
        memo.frontier.schedule(key, group_snapshot(students_by_group, key, memo.gone))


async def resync_frontiers(ctx: OperatorContext, index) -> None:
    """One LIST per watched namespace, then every group recomputed (through the debouncer).

    kopf re-lists after a watch reconnection but never replays the deletions it missed, so the
    index may keep a deleted model: a uid the index held before the LIST and the LIST lacks is
    gone. Recomputing every group also heals a status someone edited. It runs as one task rather
    than a kopf timer per StudentModel, which would put kopf's finalizer on every StudentModel.
    """
    before = {m["metadata"]["uid"] for key in list(index) for m in index.get(key, ())}

    def list_all() -> list[dict]:
        return [m for ns in ctx.namespaces or [None] for m in ctx.kube.list_student_models_in(ns)]

    listed_models = await ctx.api(list_all)
    listed, groups = set(), set(index)
    for m in listed_models:
        listed.add(m["metadata"]["uid"])
        group = (m["metadata"].get("labels") or {}).get(naming.LABEL_GROUP_KEY)
        if group:
            groups.add((m["metadata"]["namespace"], group))
    ctx.gone.clear()
    ctx.gone.update(before - listed)
    for key in groups:
        ctx.frontier.schedule(key, group_snapshot(index, key, ctx.gone, heal=True))


async def resync_loop(ctx: OperatorContext, index) -> None:
    while True:
        await asyncio.sleep(ctx.settings.frontier_resync_s)
        try:
            with metrics.observed("frontier-resync"):
                await resync_frontiers(ctx, index)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - keep the loop alive; the next pass retries
            log.exception("frontier resync failed")


# ----------------------------------------------------------------------------- registration


def register(reg: kopf.OperatorRegistry, poll_interval_s: float) -> kopf.OperatorRegistry:
    """Put every handler into `reg` (kopf's default registry when the operator runs)."""
    kopf.on.startup(registry=reg)(configure)
    kopf.on.startup(registry=reg)(start_frontier)
    kopf.on.cleanup(registry=reg)(stop_frontier)
    kopf.index(GROUP, VERSION, STUDENTS, id="students_by_group", registry=reg)(students_by_group)
    kopf.index("batch", "v1", "jobs", id="trainer_jobs", registry=reg,
               labels={naming.LABEL_MANAGED_BY: naming.MANAGER, naming.LABEL_JOB: kopf.PRESENT})(trainer_jobs)
    # Only a timer and a watch handler: with no create/update/delete handlers kopf detects no
    # changes on jobs, so it writes no annotations (one write less per job than create handlers).
    kopf.timer(GROUP, VERSION, JOBS, id="tick", interval=poll_interval_s, when=has_work, registry=reg)(tick)
    kopf.on.event(GROUP, VERSION, JOBS, id="job_event", registry=reg)(job_event)
    kopf.on.event(GROUP, VERSION, STUDENTS, id="student_event", registry=reg)(student_event)
    search_handlers.register(reg, poll_interval_s)
    return reg


def context_for(settings, namespaces: list[str], kube: Any | None = None) -> OperatorContext:
    return OperatorContext.create(settings, namespaces, kube=kube, write_frontier=write_frontier)
