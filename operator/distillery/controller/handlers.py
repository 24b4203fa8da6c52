"""kopf handlers: DistillationJob -> trainer Job -> status, and the StudentModel frontier.

Rules kept here: the spec is never written (all we learn goes to status), handlers return
nothing, every step is idempotent (deterministic names, 409 is success), and everything is
recomputed from the cluster's state after a restart.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

import kopf

from distillery.api.base import GROUP, VERSION
from distillery.api.job import DistillationJob
from distillery.api.result import PROGRESS_KEY, RESULT_KEY, TrainerResult
from distillery.controller import metrics, naming, registry
from distillery.controller import status as st
from distillery.controller.kube import Kube, load_config, termination_message
from distillery.controller.settings import Settings
from distillery.controller.trainer_job import build_trainer_job, for_generation
from distillery.fingerprint import spec_hash
from distillery.store import StoreError, open_store

JOBS = "distillationjobs"
STUDENTS = "studentmodels"
FINAL = ("Succeeded", "Failed")

SETTINGS = Settings.from_env()
WATCHED_NAMESPACES: list[str] = []  # set by controller.main before kopf starts; empty: all
_STOP = threading.Event()
_kube: Kube | None = None


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
def follow(body, meta, status, patch, logger, **_) -> None:
    with metrics.observed("follow"):
        follow_trainer(body, meta, status, patch, logger)


def follow_trainer(body, meta, status, patch, logger) -> None:
    generation = meta["generation"]
    if waiting_for_secret(status):
        start_generation(body, meta, status, patch, logger)
        return
    namespace, trainer = meta["namespace"], status.get("trainerJob")
    if not trainer:
        return
    job = for_generation(parse_job(body), generation)
    k8s_job = kube().read_job(namespace, trainer)
    if k8s_job is None:  # deleted behind our back: run this generation again
        start_generation(body, meta, {**status, "observedGeneration": None}, patch, logger)
        return
    if job_condition(k8s_job, "Complete"):
        finish(body, job, meta, status, patch, k8s_job, logger)
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


def finish(body, job: DistillationJob, meta, status, patch, k8s_job, logger) -> None:
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
    group = registry.group_of(result.teacher_uri, result.task.value, result.hardware.value)
    own_name = naming.student_model_name(job.metadata.name, generation)
    registered = [m for m in kube().list_student_models(meta["namespace"], f"{naming.LABEL_GROUP_KEY}={group}")
                  if m["metadata"]["name"] != own_name]
    if accepted and job.spec.targets.must_improve_frontier:
        dominated_by = registry.candidate_dominators(result, registered)
        if dominated_by:
            accepted = False
            reasons = [f"dominated on the frontier by {', '.join(dominated_by)}"]
    student_model = None
    if accepted:
        student_model = own_name
        if kube().create_student_model(registry.build_student_model(job, meta["uid"], generation, result)):
            milestone(body, reason="StudentRegistered", message=f"registered StudentModel {student_model}")
        update_frontier(meta["namespace"], group)
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


def update_frontier(namespace: str, group: str | None) -> None:
    """Recompute who is on the frontier of one group and write what changed to status."""
    if not group:
        return
    models = kube().list_student_models(namespace, f"{naming.LABEL_GROUP_KEY}={group}")
    write_frontier(namespace, [m for m in models if not m["metadata"].get("deletionTimestamp")])


def write_frontier(namespace: str, models: list[dict]) -> None:
    """Patch the status of the models of one group whose frontier facts changed."""
    for name, wanted in registry.frontier_statuses(models).items():
        current = next(m.get("status") or {} for m in models if m["metadata"]["name"] == name)
        if any(current.get(k) != v for k, v in wanted.items()):
            kube().patch_student_model_status(namespace, name, wanted)


@kopf.on.resume(GROUP, VERSION, STUDENTS)
@kopf.on.create(GROUP, VERSION, STUDENTS)
def student_added(meta, namespace, **_) -> None:
    with metrics.observed("frontier"):
        update_frontier(namespace, meta.get("labels", {}).get(naming.LABEL_GROUP_KEY))


@kopf.on.event(GROUP, VERSION, STUDENTS)
def student_event(event, meta, namespace, **_) -> None:
    if event.get("type") == "DELETED":
        with metrics.observed("frontier"):
            update_frontier(namespace, meta.get("labels", {}).get(naming.LABEL_GROUP_KEY))


def resync_frontiers() -> None:
    """One pass over every watched namespace: one LIST each, then only the changed statuses.

    A DELETED event lost in a watch reconnection is never replayed; this heals the frontier. It
    runs as one loop rather than a kopf timer per StudentModel: a timer would put kopf's
    finalizer on every StudentModel and cost a LIST per model per interval.
    """
    namespaces = WATCHED_NAMESPACES or [None]
    for namespace in namespaces:
        models = kube().list_student_models_in(namespace)
        groups: dict[tuple[str, str], list[dict]] = {}
        for m in models:
            group = (m["metadata"].get("labels") or {}).get(naming.LABEL_GROUP_KEY)
            if group and not m["metadata"].get("deletionTimestamp"):
                groups.setdefault((m["metadata"]["namespace"], group), []).append(m)
        for (ns, _group), members in groups.items():
            write_frontier(ns, members)


def _resync_loop(stop: threading.Event) -> None:
    while not stop.wait(SETTINGS.frontier_resync_s):
        try:
            with metrics.observed("frontier-resync"):
                resync_frontiers()
        except Exception:  # noqa: BLE001 - keep the loop alive; the next pass retries
            logging.getLogger(__name__).exception("frontier resync failed")


@kopf.on.startup()
def start_frontier_resync(**_) -> None:
    threading.Thread(target=_resync_loop, args=(_STOP,), name="frontier-resync", daemon=True).start()


@kopf.on.cleanup()
def stop_frontier_resync(**_) -> None:
    _STOP.set()
