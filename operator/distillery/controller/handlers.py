"""kopf handlers: DistillationJob -> trainer Job -> status, and the StudentModel frontier.

Rules kept here: the spec is never written (all we learn goes to status), handlers return
nothing, every step is idempotent (deterministic names, 409 is success), and everything is
recomputed from the cluster's state after a restart.

What the operator reads comes from watches where it can: kopf indexes hold the StudentModels of
each frontier group and the trainer Jobs (kopf fills them from a LIST before any handler runs, so
a restart starts from the cluster's state), instead of a LIST per finished job and a GET per poll.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from datetime import datetime

import kopf

from distillery.api.base import GROUP, VERSION
from distillery.api.job import DistillationJob
from distillery.api.result import PROGRESS_KEY, RESULT_KEY, TrainerResult
from distillery.controller import metrics, naming, registry
from distillery.controller import status as st
from distillery.controller.debounce import Debouncer
from distillery.controller.kube import Kube, load_config, termination_message
from distillery.controller.settings import Settings
from distillery.controller.trainer_job import build_trainer_job, for_generation, watched_view
from distillery.fingerprint import spec_hash
from distillery.store import StoreError, open_store

JOBS = "distillationjobs"
STUDENTS = "studentmodels"
FINAL = ("Succeeded", "Failed")

SETTINGS = Settings.from_env()
WATCHED_NAMESPACES: list[str] = []  # set by controller.main before kopf starts; empty: all
_STOP = threading.Event()
_kube: Kube | None = None
_frontier: Debouncer | None = None  # recomputes frontier groups, set up at startup
_gone: frozenset[str] = frozenset()  # StudentModel uids the index holds but the last resync LIST lacked


def kube() -> Kube:
    global _kube
    if _kube is None:
        load_config()
        _kube = Kube()
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    prefix = SETTINGS.annotation_prefix
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration")
    settings.persistence.finalizer = SETTINGS.finalizer
    settings.posting.level = logging.WARNING  # our own events carry the milestones
    settings.watching.server_timeout = 120
    kube()
    metrics.serve(SETTINGS.metrics_port)


# ----------------------------------------------------------------------------- indexes


# Both are async: they are pure and quick, so they run in kopf's event loop, not its thread pool.
@kopf.index(GROUP, VERSION, STUDENTS, id="students_by_group")
async def students_by_group(body, namespace, labels, **_):
    """StudentModels by (namespace, frontier group), as much of each as the frontier needs."""
    group = labels.get(naming.LABEL_GROUP_KEY)
    return {(namespace, group): registry.indexed(body)} if group else {}  # {}: drop a removed label's entry


@kopf.index("batch", "v1", "jobs", id="trainer_jobs",
            labels={naming.LABEL_MANAGED_BY: naming.MANAGER, naming.LABEL_JOB: kopf.PRESENT})
async def trainer_jobs(body, namespace, name, **_):
    """Trainer Jobs by (namespace, name), as much of each as following it needs."""
    return {(namespace, name): watched_view(body)}


def _copied(read):
    """read() retried until it completes. kopf changes its indexes in the event loop while
    handlers and the frontier thread read them, so an iteration that raced a change is redone."""
    for _ in range(100):
        try:
            return read()
        except RuntimeError:  # "changed size during iteration"
            continue
    return read()


def entries(index, key) -> list[dict]:
    """A copy of one key's values."""
    return _copied(lambda: list(index.get(key, ())))


def keys(index) -> list:
    return _copied(lambda: list(index))


# ----------------------------------------------------------------------------- helpers


def parse_job(body) -> DistillationJob:
    meta = body["metadata"]
    return DistillationJob.model_validate({
        "apiVersion": body["apiVersion"], "kind": body["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "generation": meta.get("generation")},
        "spec": dict(body["spec"]),
    })


def credentials(job: DistillationJob) -> dict[str, str] | None:
    """The store credentials from the job's Secret (None when the job names none)."""
    name = job.spec.output.credentials_secret or SETTINGS.default_credentials_secret
    if not name:
        return None
    data = kube().secret_data(job.metadata.namespace, name)
    if data is None:
        raise LookupError(f"Secret {name!r} not found in namespace {job.metadata.namespace!r}")
    return data


def job_store(job: DistillationJob):
    creds = credentials(job) or {}
    return open_store(job.spec.output.uri, endpoint=job.spec.output.endpoint or SETTINGS.default_endpoint,
                      region=job.spec.output.region,
                      credentials={k: creds[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                         "AWS_SESSION_TOKEN") if k in creds} or None)


def milestone(body, reason: str, message: str) -> None:
    """A Normal Event. kopf.info would be filtered by posting.level, which keeps handler logs out."""
    kopf.event(body, type="Normal", reason=reason, message=message)


def apply_status(patch, body, values: dict) -> None:
    patch.status.update(values)
    if "phase" in values:
        metrics.set_phase(f"{body['metadata']['namespace']}/{body['metadata']['name']}", values["phase"])


def job_condition(job: dict, type_: str) -> dict | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


# ----------------------------------------------------------------------------- DistillationJob


@kopf.on.resume(GROUP, VERSION, JOBS)
@kopf.on.create(GROUP, VERSION, JOBS)
@kopf.on.update(GROUP, VERSION, JOBS, field="spec")
def reconcile(body, meta, status, patch, logger, **_) -> None:
    with metrics.observed("reconcile"):
        start_generation(body, meta, status, patch, logger)


def waiting_for_secret(status) -> bool:
    return status.get("phase") == "Failed" and any(
        c.get("type") == st.SUCCEEDED and c.get("reason") == "SecretMissing" for c in status.get("conditions") or [])


def start_generation(body, meta, status, patch, logger) -> None:
    """Make sure the current generation has its trainer Job, and older ones do not."""
    generation = meta["generation"]
    if (status.get("observedGeneration") == generation and status.get("phase") in FINAL
            and not waiting_for_secret(status)):
        return  # already finished (e.g. resumed after an operator restart)
    previous = status.get("conditions")
    try:
        job = parse_job(body)
    except ValueError as err:
        apply_status(patch, body, st.failed(generation, "InvalidSpec", str(err), previous))
        kopf.warn(body, reason="InvalidSpec", message=str(err)[:1000])
        return
    try:
        credentials(job)
    except LookupError as err:
        apply_status(patch, body, st.failed(generation, "SecretMissing", str(err), previous))
        kopf.warn(body, reason="SecretMissing", message=str(err))
        return

    namespace, name = meta["namespace"], meta["name"]
    for old in kube().list_jobs(namespace, f"{naming.LABEL_JOB}={name}"):
        if old["metadata"]["labels"].get(naming.LABEL_GENERATION) != str(generation):
            kube().delete_job(namespace, old["metadata"]["name"])
            logger.info("deleted trainer Job %s of an older generation", old["metadata"]["name"])

    manifest = build_trainer_job(job, meta["uid"], generation, SETTINGS)
    trainer = manifest["metadata"]["name"]
    if kube().create_job(manifest):
        milestone(body, reason="TrainerJobCreated", message=f"created trainer Job {trainer} for generation {generation}")
    if (status.get("observedGeneration") != generation or status.get("trainerJob") != trainer
            or waiting_for_secret(status)):
        apply_status(patch, body, st.started(generation, trainer, previous, bool(job.spec.queue_name)))


def needs_following(status, meta, **_) -> bool:
    """Timers follow a started generation; starting one is the create/update/resume handlers'
    job (kopf retries those), so a timer never races them to create the same Job."""
    if waiting_for_secret(status):  # the Secret may appear later
        return True
    return status.get("observedGeneration") == meta.get("generation") and status.get("phase") not in FINAL


@kopf.timer(GROUP, VERSION, JOBS, interval=SETTINGS.poll_interval_s, when=needs_following)
def follow(body, meta, status, patch, logger, memo, trainer_jobs, students_by_group, **_) -> None:
    with metrics.observed("follow"):
        follow_trainer(body, meta, status, patch, logger, memo, trainer_jobs, students_by_group)


def observed_job(namespace: str, name: str, index, memo) -> dict | None:
    """The trainer Job as the watch last saw it; from a GET when the index has no single entry for
    it (the watch may lag a Job just created, and a missing Job gets recreated, so its absence is
    confirmed first), and once per trainer_recheck_s (a DELETED event lost while the watch
    reconnected would leave a stale entry behind)."""
    seen = entries(index, (namespace, name))
    checked = memo.setdefault("trainer_checked", {})  # per DistillationJob, in memory only
    now = time.monotonic()
    if len(seen) == 1 and now - checked.setdefault(name, now) < SETTINGS.trainer_recheck_s:
        return seen[0]
    checked[name] = now
    return kube().read_job(namespace, name)


def follow_trainer(body, meta, status, patch, logger, memo, jobs_index, students_index) -> None:
    generation = meta["generation"]
    if waiting_for_secret(status):
        start_generation(body, meta, status, patch, logger)
        return
    namespace, trainer = meta["namespace"], status.get("trainerJob")
    if not trainer:
        return
    k8s_job = observed_job(namespace, trainer, jobs_index, memo)
    if k8s_job is None:  # deleted behind our back: run this generation again
        start_generation(body, meta, {**status, "observedGeneration": None}, patch, logger)
        return
    job = for_generation(parse_job(body), generation)
    if job_condition(k8s_job, "Complete"):
        finish(body, job, meta, status, patch, logger, students_index)
    elif job_condition(k8s_job, "Failed"):
        fail(body, meta, status, patch, k8s_job)
    elif (k8s_job.get("spec") or {}).get("suspend"):
        return  # queued (Kueue admits it by unsuspending): stays Pending
    else:
        progress = read_progress(job)
        if status.get("phase") != "Running" or (progress and progress != status.get("progress")):
            apply_status(patch, body, st.running(generation, progress, status.get("conditions")))


def read_progress(job: DistillationJob) -> dict | None:
    try:
        raw = job_store(job).read_json(PROGRESS_KEY)
    except (StoreError, LookupError, ValueError):
        return None  # not written yet, or the store is unreachable: progress is best-effort
    out = {"stage": str(raw.get("stage", "")), "percent": float(raw.get("percent", 0.0))}
    if raw.get("epoch") is not None:
        out.update(epoch=int(raw["epoch"]), totalEpochs=raw.get("totalEpochs"))
    return out


def fail(body, meta, status, patch, k8s_job: dict) -> None:
    generation = meta["generation"]
    cond = job_condition(k8s_job, "Failed") or {}
    reason, message = cond.get("reason") or "TrainerFailed", cond.get("message") or "the trainer Job failed"
    pods = kube().job_pods(meta["namespace"], k8s_job["metadata"]["name"])
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        trainer_msg, container_reason = termination_message(pod)
        if container_reason == "OOMKilled":
            reason, message = "OOMKilled", "the trainer ran out of memory (raise spec.resources.memory)"
            break
        if trainer_msg:
            reason = trainer_msg.get("reason") or reason
            message = trainer_msg.get("message") or message
            break
    if cond.get("reason") == "DeadlineExceeded":
        reason = "DeadlineExceeded"
        message = f"the trainer exceeded spec.resources.deadlineSeconds; {message}"
    apply_status(patch, body, st.failed(generation, reason, message, status.get("conditions")))
    kopf.warn(body, reason=reason, message=message[:1000])
    metrics.STUDENTS.labels("failed").inc()


def finish(body, job: DistillationJob, meta, status, patch, logger, students_index) -> None:
    generation = meta["generation"]
    previous = status.get("conditions")
    try:
        result = TrainerResult.model_validate(job_store(job).read_json(RESULT_KEY))
    except (StoreError, LookupError, ValueError) as err:
        message = f"the trainer finished but its result could not be read: {err}"
        apply_status(patch, body, st.failed(generation, "ResultUnavailable", message, previous))
        kopf.warn(body, reason="ResultUnavailable", message=message[:1000])
        return
    if result.spec_hash != spec_hash(job.spec):
        message = f"{job.spec.output.uri}/{RESULT_KEY} belongs to another spec (was the output shared?)"
        apply_status(patch, body, st.failed(generation, "ResultMismatch", message, previous))
        return

    accepted, reasons = result.decision.accepted, list(result.decision.reasons)
    own_name = naming.student_model_name(job.metadata.name, generation)
    if accepted and job.spec.targets.must_improve_frontier:
        group = registry.group_of(result.teacher_uri, result.task.value, result.hardware.value)
        registered = [m for m in registry.live(entries(students_index, (meta["namespace"], group)), _gone)
                      if m["metadata"]["name"] != own_name]
        dominated_by = registry.candidate_dominators(result, registered)
        if dominated_by:
            accepted = False
            reasons = [f"dominated on the frontier by {', '.join(dominated_by)}"]
    student_model = None
    if accepted:
        # Its own ADDED event recomputes the group's frontier: the verdict does not wait for it.
        student_model = own_name
        if kube().create_student_model(registry.build_student_model(job, meta["uid"], generation, result)):
            milestone(body, reason="StudentRegistered", message=f"registered StudentModel {student_model}")
    apply_status(patch, body, st.finished(generation, result, accepted, reasons, student_model, previous))
    milestone(body, reason="Accepted" if accepted else "Rejected",
              message=f"speedup {result.speedup:.2f}x, retention {result.accuracy_retention:.4f}, "
                      f"pareto {result.pareto_score:.4f}")
    metrics.STUDENTS.labels("accepted" if accepted else "rejected").inc()
    started_at, done_at = result.start_time, result.completion_time
    try:
        metrics.TRAINER_SECONDS.observe(
            (datetime.fromisoformat(done_at) - datetime.fromisoformat(started_at)).total_seconds())
    except ValueError:
        logger.debug("could not parse trainer times")


@kopf.on.delete(GROUP, VERSION, JOBS, optional=True)
def forget(meta, **_) -> None:
    # The trainer Job and its pods go with the owner reference; only our gauge needs updating.
    metrics.set_phase(f"{meta['namespace']}/{meta['name']}", None)


# ----------------------------------------------------------------------------- StudentModel


def write_frontier(namespace: str, models: list[dict]) -> None:
    """Patch the status of the models of one group whose frontier facts changed."""
    for name, wanted in registry.frontier_statuses(models).items():
        current = next(m.get("status") or {} for m in models if m["metadata"]["name"] == name)
        if any(current.get(k) != v for k, v in wanted.items()):
            kube().patch_student_model_status(namespace, name, wanted)


def recompute_group(index, key: tuple[str, str]) -> None:
    """One frontier pass over one (namespace, group), from the index: no LIST."""
    with metrics.observed("frontier"):
        write_frontier(key[0], registry.live(entries(index, key), _gone))


@kopf.on.event(GROUP, VERSION, STUDENTS)
async def student_event(event, body, namespace, labels, **_) -> None:
    """Arrivals, departures and spec edits recompute their group, once per burst (debounced).

    A watch handler, not create/resume handlers: kopf then keeps no state on StudentModels (no
    annotation or finalizer patches), and its initial LIST still brings every model after a restart.
    """
    group = labels.get(naming.LABEL_GROUP_KEY)
    if group and _frontier is not None and registry.changes_frontier(event.get("type"), body):
        _frontier.schedule((namespace, group))


def resync_frontiers(index) -> None:
    """One LIST per watched namespace, then every group recomputed (through the debouncer).

    kopf re-lists after a watch reconnection but never replays the deletions it missed, so the
    index may keep a deleted model: a uid the index held before the LIST and the LIST lacks is
    gone. Recomputing every group also heals a status someone edited. It runs as one loop rather
    than a kopf timer per StudentModel, which would put kopf's finalizer on every StudentModel.
    """
    global _gone
    before = {m["metadata"]["uid"] for key in keys(index) for m in entries(index, key)}
    listed, groups = set(), set(keys(index))
    for namespace in WATCHED_NAMESPACES or [None]:
        for m in kube().list_student_models_in(namespace):
            listed.add(m["metadata"]["uid"])
            group = (m["metadata"].get("labels") or {}).get(naming.LABEL_GROUP_KEY)
            if group:
                groups.add((m["metadata"]["namespace"], group))
    _gone = frozenset(before - listed)
    for key in groups:
        _frontier.schedule(key)


def _resync_loop(stop: threading.Event, index) -> None:
    while not stop.wait(SETTINGS.frontier_resync_s):
        try:
            with metrics.observed("frontier-resync"):
                resync_frontiers(index)
        except Exception:  # noqa: BLE001 - keep the loop alive; the next pass retries
            logging.getLogger(__name__).exception("frontier resync failed")


@kopf.on.startup()
def start_frontier(students_by_group, **_) -> None:
    # Startup handlers get the (still empty) index objects that kopf then keeps filling.
    global _frontier
    _frontier = Debouncer(functools.partial(recompute_group, students_by_group),
                          SETTINGS.frontier_debounce_s).start("frontier")
    threading.Thread(target=_resync_loop, args=(_STOP, students_by_group), name="frontier-resync",
                     daemon=True).start()


@kopf.on.cleanup()
def stop_frontier(**_) -> None:
    _STOP.set()
    if _frontier is not None:
        _frontier.stop()
