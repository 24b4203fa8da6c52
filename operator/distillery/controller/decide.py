"""The reconcile decision: what was observed of a DistillationJob -> the actions to take.

Pure functions (no I/O, no kopf): handlers.py observes (kopf's body and indexes, a GET or LIST
where needed, the store reads of store_io.py) and executes the actions (executors.py). Every
branch of the job's life is here, so each is a fast unit test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillery.api.job import (
    MAX_LISTED_RANKS,
    DistillationJob,
    ModelMetrics,
    Progress,
    RankProgress,
)
from distillery.api.load import SpecError, load_job
from distillery.controller import naming, policy, registry
from distillery.controller import status as st
from distillery.controller.kube import termination_message
from distillery.controller.result_check import Checked, check_result
from distillery.controller.settings import Settings
from distillery.controller.store_io import StoreRead
from distillery.controller.trainer_job import (
    build_trainer_job,
    build_worker_service,
    for_dry_run,
    for_generation,
)

FINAL = ("Succeeded", "Failed")
PROGRESS, RESULT = "progress", "result"


# ----------------------------------------------------------------------------- what was observed


@dataclass(frozen=True)
class Observed:
    """The DistillationJob as kopf delivered it."""

    name: str
    namespace: str
    uid: str
    generation: int
    body: Mapping[str, Any]  # apiVersion, kind, spec
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def conditions(self) -> list[dict]:
        return list(self.status.get("conditions") or [])


@dataclass(frozen=True)
class SecretSeen:
    """The Secret a job names, as the API server has it (metadata None: there is none)."""

    name: str
    metadata: Mapping[str, Any] | None


@dataclass(frozen=True)
class ParentSeen:
    """The StudentModel a job continues (student.base.studentModel), its spec as the API server
    has it (None: there is none in the job's namespace)."""

    name: str
    spec: Mapping[str, Any] | None


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class CreateJob:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class CreateService:
    """The headless Service of a multi-worker job (created before its Job; idempotent)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class PatchStatus:
    patch: st.StatusPatch


@dataclass(frozen=True)
class RegisterStudent:
    body: dict[str, Any]


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class ReadStore:
    kind: str  # PROGRESS or RESULT


@dataclass(frozen=True)
class ForgetStore:
    """The job needs its store no more: drop the opened store and the reads kept for it."""


@dataclass(frozen=True)
class Retry:
    """Transient trouble: run the handler again after `delay` seconds."""

    delay: float
    message: str


Action = CreateService | CreateJob | DeleteJob | PatchStatus | RegisterStudent | Event | ReadStore | ForgetStore | Retry


# ----------------------------------------------------------------------------- helpers


def parse_job(obs: Observed) -> DistillationJob:
    """The job, or SpecError with the one line the CLI prints."""
    return load_job({
        "apiVersion": obs.body.get("apiVersion"), "kind": obs.body.get("kind"),
        "metadata": {"name": obs.name, "namespace": obs.namespace, "generation": obs.generation},
        "spec": dict(obs.body.get("spec") or {}),
    })


def secret_name(job: DistillationJob, settings: Settings) -> str | None:
    return job.spec.output.credentials_secret or settings.default_credentials_secret


def finished_generation(obs: Observed) -> bool:
    return obs.status.get("observedGeneration") == obs.generation and obs.status.get("phase") in FINAL


def waiting_reason(obs: Observed) -> str | None:
    """The reason of a Pending job that is not started yet (SecretMissing, ParentMissing), else None."""
    if obs.status.get("phase") != "Pending" or obs.status.get("trainerJob"):
        return None
    return next((c.get("reason") for c in obs.conditions if c.get("type") == st.SUCCEEDED), None)


def retry_delay(retry: int) -> float:
    """5 s, 10 s, 20 s, 40 s, then once a minute."""
    return float(min(60, 5 * 2 ** min(retry, 4)))


def wait_for(obs: Observed, reason: str, message: str, retry: int) -> list[Action]:
    """Stay Pending with `reason` and look again later; the status and Event are written once."""
    actions: list[Action] = []
    if waiting_reason(obs) != reason or obs.status.get("observedGeneration") != obs.generation:
        actions += [PatchStatus(st.waiting(obs.generation, reason, message, obs.conditions)),
                    Event(reason, message, warning=True)]
    return [*actions, Retry(retry_delay(retry), message)]


def parent_weights(obs: Observed, parent: ParentSeen | None, retry: int) -> tuple[str | None, list[Action]]:
    """The weights URI of student.base.studentModel, or the actions when it cannot be had yet
    (missing: wait, as GitOps may apply the job first) or at all (no weights: fail)."""
    if parent is None:
        return None, []
    if parent.spec is None:
        return None, wait_for(obs, "ParentMissing", f"StudentModel {parent.name!r} not found in namespace "
                              f"{obs.namespace!r} (student.base.studentModel)", retry)
    weights = (parent.spec.get("artifacts") or {}).get("weights")
    if not isinstance(weights, str) or not weights:
        return None, fail(obs, "ParentInvalid", f"StudentModel {parent.name!r} (student.base.studentModel) has no "
                          "spec.artifacts.weights to continue from")
    return weights, []


def fail(obs: Observed, reason: str, message: str) -> list[Action]:
    return [PatchStatus(st.failed(obs.generation, reason, message, obs.conditions)),
            Event(reason, message[:1000], warning=True), ForgetStore()]


# ----------------------------------------------------------------------------- starting


def decide_start(obs: Observed, settings: Settings, secret: SecretSeen | None,
                 other_generations: list[str], retry: int = 0, parent: ParentSeen | None = None) -> list[Action]:
    """Make sure the current generation has its trainer Job, and older ones do not.

    `secret` is the Secret the job names (None when it names none), `other_generations` the
    names of this job's trainer Jobs of other generations, `parent` the StudentModel named by
    student.base.studentModel (None when it names none)."""
    if finished_generation(obs):
        return []  # already finished (e.g. resumed after an operator restart)
    try:
        job = parse_job(obs)
    except SpecError as err:
        return fail(obs, "InvalidSpec", str(err))
    violations = policy.job_violations(job, settings)
    if violations:
        return fail(obs, "PolicyViolation", "; ".join(violations))
    job = for_dry_run(job)  # after the policy, which judges the spec as written
    if secret is not None and secret.metadata is None:
        return wait_for(obs, "SecretMissing", f"Secret {secret.name!r} not found in namespace {obs.namespace!r} "
                        "(output.credentialsSecret)", retry)
    if secret is not None and not policy.secret_opted_in(secret.metadata, secret.name, settings):
        return fail(obs, "SecretNotAllowed",
                    f"Secret {secret.name!r} (output.credentialsSecret) is not marked for use by "
                    f"DistillationJobs: label it {policy.OPT_IN_LABEL}={policy.OPT_IN_VALUE}, "
                    "or ask an admin to list it in the chart's allowedSecrets")

    parent_uri, waiting = parent_weights(obs, parent, retry)
    if waiting:
        return waiting

    actions: list[Action] = [DeleteJob(name) for name in other_generations]
    manifest = build_trainer_job(job, obs.uid, obs.generation, settings, parent_uri)
    trainer = manifest["metadata"]["name"]
    service = build_worker_service(job, obs.uid)
    if service is not None:
        actions.append(CreateService(service))
    actions.append(CreateJob(manifest))
    if (obs.status.get("observedGeneration") != obs.generation or obs.status.get("trainerJob") != trainer
            or waiting_reason(obs) is not None):
        actions.append(PatchStatus(st.started(obs.generation, trainer, obs.conditions, bool(job.spec.queue_name),
                                              job.spec.resources.world_size())))
    return actions


# ----------------------------------------------------------------------------- following


def job_condition(job: Mapping, type_: str) -> dict | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def latest_reports(pods: list[dict]) -> list[tuple[dict | None, str | None]]:
    """(termination message, container reason) of each pod, newest first."""
    ordered = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    return [termination_message(p) for p in ordered]


def progress_of(raw: Any) -> Progress | None:
    """progress.json as the status shows it; None when it is not a progress document (the file is
    the trainer's, but anyone with the store's credentials can write it)."""
    out = point_of(raw)
    if out is not None:
        out.ranks = ranks_of(raw.get("ranks"))
    return out


def whole(value: Any) -> int | None:
    """A count the status can hold (an int32, not negative), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def point_of(raw: Any) -> Progress | None:
    """The stage, percent and epoch of one progress document (or of one rank's line in it)."""
    if not isinstance(raw, Mapping):
        return None
    percent = raw.get("percent", 0.0)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent):
        return None
    out = Progress(stage=str(raw.get("stage", ""))[:64], percent=round(min(100.0, max(0.0, float(percent))), 2))
    out.epoch = whole(raw.get("epoch"))
    if out.epoch is not None:
        out.total_epochs = whole(raw.get("totalEpochs"))
    return out


def ranks_of(raw: Any) -> list[RankProgress] | None:
    """progress.json's `ranks` (distributed runs, where the ranks differ), each line checked like the
    progress itself; None when it is not a list the trainer writes."""
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_LISTED_RANKS + 1:
        return None
    ranks = []
    for line in raw:
        point = point_of(line)
        rank = whole(line.get("rank")) if point is not None else None
        if rank is None:
            return None
        ranks.append(RankProgress(rank=rank, stage=point.stage, percent=point.percent, epoch=point.epoch,
                                  total_epochs=point.total_epochs))
    return ranks


def set_fields(wire: Mapping | None) -> dict | None:
    """A progress as written in a merge patch (None clears a field) -> as the API server keeps it."""
    return None if wire is None else {k: v for k, v in wire.items() if v is not None}


def unknown_progress(read: StoreRead, previous: Mapping | None) -> Progress:
    percent = float((previous or {}).get("percent") or 0.0)
    return Progress(stage="unknown", percent=percent, message=f"progress unavailable: {read.error}"[:300])


def decide_follow(obs: Observed, settings: Settings, trainer: Mapping, pods: list[dict] | None,
                  progress: StoreRead | None, result: StoreRead | None,
                  registered: list[Mapping] | None = None, written: Mapping | None = None) -> list[Action]:
    """One look at a started generation whose trainer Job exists.

    `pods` are the trainer's pods (looked at once the Job finished), `progress`/`result` the last
    completed store reads (None: none yet; a progress read's value None: no progress.json yet),
    `registered` the StudentModels of the job's frontier group (only needed with
    targets.mustImproveFrontier), `written` the progress this operator last wrote for the
    generation (the watch may not have brought that write back yet)."""
    if job_condition(trainer, "Complete"):
        return finish(obs, settings, pods or [], result, registered)
    failed = job_condition(trainer, "Failed")
    if failed:
        return trainer_failed(obs, failed, pods or [])
    if (trainer.get("spec") or {}).get("suspend"):
        return []  # queued (Kueue admits it by unsuspending): stays Pending
    if progress is None and not pod_ready(trainer):
        return []  # no pod is up yet, so there is no progress.json to read (1000 queued jobs: 0 reads)
    actions: list[Action] = [ReadStore(PROGRESS)]
    previous = written if written is not None else obs.status.get("progress")
    if progress is None:
        seen = None
    elif progress.ok:
        seen = progress_of(progress.value)
    else:
        seen = unknown_progress(progress, previous)
    # Running once the trainer has said something (or the store cannot be read): a Job whose pod
    # has not started yet stays Pending, and each change is written once.
    if seen is not None and seen.to_wire() != set_fields(previous):
        actions.insert(0, PatchStatus(st.running(obs.generation, seen, obs.conditions)))
    return actions


def pod_ready(trainer: Mapping) -> bool:
    """Whether a trainer pod is up: Job.status.ready counts Ready pods; a cluster that does
    not report it (before Kubernetes 1.29) is taken as ready, so progress is read as before."""
    ready = (trainer.get("status") or {}).get("ready")
    return ready is None or ready > 0


def trainer_failed(obs: Observed, cond: Mapping, pods: list[dict]) -> list[Action]:
    reason, message = cond.get("reason") or "TrainerFailed", cond.get("message") or "the trainer Job failed"
    for trainer_msg, container_reason in latest_reports(pods):
        if container_reason == "OOMKilled":
            reason, message = "OOMKilled", "the trainer ran out of memory (raise spec.resources.memory)"
            break
        if trainer_msg:
            reason = str(trainer_msg.get("reason") or reason)
            message = str(trainer_msg.get("message") or message)
            break
    if cond.get("reason") == "DeadlineExceeded":
        reason = "DeadlineExceeded"
        message = f"the trainer exceeded spec.resources.deadlineSeconds; {message}"
    return fail(obs, reason, message)


def dry_run_passed(obs: Observed, pods: list[dict]) -> list[Action]:
    """A dry run's Job completed: its checks passed (there is no result to read). The summary comes
    from the pod's termination message, one line."""
    reported = next((msg for msg, _ in latest_reports(pods) if msg and msg.get("ok") is True), None)
    text = reported.get("message") if reported and reported.get("dryRun") is True else None
    message = " ".join(text.split())[:1000] if isinstance(text, str) and text.strip() else \
        "the dry run's checks passed; nothing was trained or written"
    return [PatchStatus(st.checked(obs.generation, message, obs.conditions)), Event("Checked", message),
            ForgetStore()]


def finish(obs: Observed, settings: Settings, pods: list[dict], result: StoreRead | None,
           registered: list[Mapping] | None) -> list[Action]:
    if parse_job(obs).spec.dry_run:
        return dry_run_passed(obs, pods)
    if result is None or (not result.ok and result.failures < settings.result_read_attempts):
        return [ReadStore(RESULT)]
    if not result.ok:
        return fail(obs, "ResultUnavailable",
                    f"the trainer finished but its result could not be read ({result.failures} tries): {result.error}")
    job = for_generation(parse_job(obs), obs.generation)
    reported = next((msg for msg, _ in latest_reports(pods) if msg and msg.get("ok") is True), None)
    own_name = naming.student_model_name(obs.name, obs.generation)

    def dominators(candidate: ModelMetrics) -> list[str] | None:
        if not job.spec.targets.must_improve_frontier or registered is None:
            return None
        others = [m for m in registered if m["metadata"]["name"] != own_name]
        return registry.candidate_dominators(candidate, others)

    checked = check_result(result.value, job, reported, dominators)
    if not isinstance(checked, Checked):
        return fail(obs, checked.reason, checked.message)
    res, verdict = checked.result, checked.verdict
    actions: list[Action] = []
    student_model = None
    if verdict.accepted:
        # Its own ADDED event recomputes the group's frontier: the verdict does not wait for it.
        student_model = own_name
        actions.append(RegisterStudent(registry.build_student_model(job, obs.uid, obs.generation, res)))
    actions.append(PatchStatus(st.finished(obs.generation, res, verdict.accepted, list(verdict.reasons),
                                           student_model, obs.conditions)))
    summary = (f"{res.variant} variant: " if len(res.variants) > 1 else "") + (f"speedup {res.speedup:.2f}x, retention {res.accuracy_retention:.4f}, "
               f"pareto {res.pareto_score:.4f}" + (f"; registered StudentModel {student_model}" if student_model else ""))
    actions += [Event("Accepted" if verdict.accepted else "Rejected", summary), ForgetStore()]
    return actions


def frontier_group_of(job: DistillationJob) -> str:
    """The frontier group from the spec (not from the result file, which the job's writer controls)."""
    return registry.group_of(job.spec.teacher.uri, job.spec.teacher.task.value, job.spec.targets.hardware.value)


def wants(actions: list[Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


__all__ = ["Action", "CreateJob", "CreateService", "DeleteJob", "Event", "FINAL", "ForgetStore", "Observed", "PatchStatus",
           "ReadStore", "RegisterStudent", "Retry", "SecretSeen", "decide_follow", "decide_start",
           "frontier_group_of", "parse_job", "progress_of", "secret_name", "wants"]

