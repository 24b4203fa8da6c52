"""Pure builder: a DistillationJob (one generation) -> the batch/v1 Job that trains it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from distillery.api.job import STUDENT_BASE_URI_ENV, DistillationJob
from distillery.api.result import EXIT_INVALID
from distillery.controller import naming
from distillery.controller.settings import Settings

WORK_DIR = "/tmp"  # an emptyDir: the root filesystem is read-only
TERMINATION_LOG = "/dev/termination-log"
RENDEZVOUS_PORT = 29400  # torchrun's c10d rendezvous store, served by worker 0


def generation_output_uri(uri: str, generation: int) -> str:
    """Each generation writes under its own prefix, so a new run never overwrites artifacts a
    registered StudentModel points to, and a retried pod resumes its own checkpoints."""
    return f"{uri.rstrip('/')}/g{generation}"


def for_generation(job: DistillationJob, generation: int) -> DistillationJob:
    """The job as the trainer of one generation sees it (the stored spec is never changed)."""
    spec = job.spec.model_copy(deep=True)
    spec.output.uri = generation_output_uri(job.spec.output.uri, generation)
    if spec.output.cache_uri is None:
        # One teacher-output cache for every generation: an edit of the student reuses it.
        spec.output.cache_uri = f"{job.spec.output.uri.rstrip('/')}/cache"
    return job.model_copy(update={"spec": spec})


def for_dry_run(job: DistillationJob) -> DistillationJob:
    """A dry run reads files and trains nothing: one pod, one process, no GPU, whatever the spec asks
    for its training (the stored spec is never changed)."""
    if not job.spec.dry_run:
        return job
    spec = job.spec.model_copy(deep=True)
    spec.resources = spec.resources.model_copy(update={"gpus": 0, "workers": None, "processes_per_worker": None})
    return job.model_copy(update={"spec": spec})


def trainer_env(job: DistillationJob, settings: Settings, student_base_uri: str | None = None) -> list[dict[str, Any]]:
    """The job document travels as JSON in DISTILLERY_JOB; credentials only by Secret reference;
    the weights of student.base.studentModel, resolved by the operator, beside it."""
    job = for_generation(job, job.metadata.generation or 1)
    document = {"apiVersion": job.api_version, "kind": job.kind,
                "metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace},
                "spec": job.spec.to_wire()}
    env: list[dict[str, Any]] = [
        {"name": "DISTILLERY_JOB", "value": json.dumps(document, separators=(",", ":"))},
        {"name": "DISTILLERY_REJECTED_EXIT_CODE", "value": "0"},  # a rejected student is a finished run
        # The S3 output's lease holder: a retried pod of this generation takes its own lease over
        # at once instead of waiting for it to expire (output_lease.py).
        {"name": "DISTILLERY_OUTPUT_HOLDER",
         "value": f"{job.metadata.namespace}/{job.metadata.name} generation {job.metadata.generation or 1}"},
        {"name": "HOME", "value": WORK_DIR},
        {"name": "TMPDIR", "value": WORK_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if student_base_uri is not None:
        env.append({"name": STUDENT_BASE_URI_ENV, "value": student_base_uri})
    endpoint = job.spec.output.endpoint or settings.default_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if job.spec.output.region:
        env.append({"name": "AWS_REGION", "value": job.spec.output.region})
    secret = job.spec.output.credentials_secret or settings.default_credentials_secret
    if secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        env.append({"name": "AWS_SESSION_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SESSION_TOKEN", "optional": True}}})
    return env


def distributed_env(job: DistillationJob, uid: str, generation: int) -> list[dict[str, Any]]:
    """What the trainer's launcher (distillery_trainer/launch.py) needs to start torchrun: none for
    a one-process job. Several workers rendezvous at worker 0's stable DNS name."""
    r = job.spec.resources
    if r.world_size() == 1:
        return []
    env = [{"name": "DISTILLERY_NNODES", "value": str(r.pods())},
           {"name": "DISTILLERY_NPROC_PER_NODE", "value": str(r.processes())}]
    if r.pods() > 1:
        trainer = naming.trainer_job_name(job.metadata.name, generation)
        service = naming.worker_service_name(job.metadata.name)
        env += [{"name": "DISTILLERY_RDZV_ENDPOINT", "value": f"{trainer}-0.{service}:{RENDEZVOUS_PORT}"},
                {"name": "DISTILLERY_RDZV_ID", "value": f"{uid}-g{generation}"}]
    return env


def build_worker_service(job: DistillationJob, uid: str) -> dict[str, Any] | None:
    """The headless Service behind the pods' DNS names (<trainer job>-<index>.<service>), for a job
    with several workers; None otherwise. Not-ready pods are published too: worker 0 must be
    reachable while the others wait for it at the rendezvous, before anything is ready."""
    if job.spec.resources.pods() == 1:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.worker_service_name(job.metadata.name),
            "namespace": job.metadata.namespace,
            "labels": {naming.LABEL_JOB: job.metadata.name, naming.LABEL_MANAGED_BY: naming.MANAGER,
                       naming.LABEL_COMPONENT: "trainer"},
            "ownerReferences": [owner_reference(job, uid)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {naming.LABEL_JOB: job.metadata.name, naming.LABEL_COMPONENT: "trainer"},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def owner_reference(job: DistillationJob, uid: str) -> dict[str, Any]:
    return {"apiVersion": job.api_version, "kind": job.kind, "name": job.metadata.name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def container_resources(job: DistillationJob, settings: Settings) -> dict[str, Any]:
    r = job.spec.resources
    values: dict[str, Any] = {}
    cpu, memory = r.cpu or settings.default_cpu, r.memory or settings.default_memory
    if cpu:
        values["cpu"] = cpu
    if memory:
        values["memory"] = memory
    limits = dict(values)
    if r.gpus:
        limits["nvidia.com/gpu"] = str(r.gpus)
    out: dict[str, Any] = {}
    if values:
        out["requests"] = values
    if limits:
        out["limits"] = limits
    return out


def labels_for(job: DistillationJob, generation: int) -> dict[str, str]:
    labels = {
        naming.LABEL_JOB: job.metadata.name,
        naming.LABEL_GENERATION: str(generation),
        naming.LABEL_MANAGED_BY: naming.MANAGER,
        naming.LABEL_COMPONENT: "trainer",
    }
    if job.spec.queue_name:
        labels[naming.KUEUE_QUEUE_LABEL] = job.spec.queue_name
    return labels


def build_trainer_job(job: DistillationJob, uid: str, generation: int, settings: Settings,
                      student_base_uri: str | None = None) -> dict[str, Any]:
    """The trainer Job: restricted pod, no API token, owned by the DistillationJob.
    `student_base_uri`: the weights of student.base.studentModel, when the job names one."""
    job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"generation": generation})})
    name = naming.trainer_job_name(job.metadata.name, generation)
    labels = labels_for(job, generation)
    pod_labels = {k: v for k, v in labels.items() if k != naming.KUEUE_QUEUE_LABEL}
    r = job.spec.resources
    container = {
        "name": "trainer",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.trainer_command),
        "env": trainer_env(job, settings, student_base_uri) + distributed_env(job, uid, generation),
        "resources": container_resources(job, settings),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        # The kubelet evicts the pod when the work folder outgrows the limit, so one job cannot
        # fill the node's disk. No ephemeral-storage request: the limit is a ceiling, not what a
        # job typically uses, and requesting it would reserve that much disk on every node it lands.
        "volumes": [{"name": "work", "emptyDir": {"sizeLimit": settings.work_dir_size_limit}}],
    }
    if r.pods() > 1:
        pod_spec["subdomain"] = naming.worker_service_name(job.metadata.name)
    if r.node_selector:
        pod_spec["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in r.tolerations]
    job_spec: dict[str, Any] = {
        # A lost worker pod fails its peers too (they lose the connection): one restart of a group
        # counts a failure per pod (measured: deleting worker 1 of 2 counted 2), so the limit is
        # retries of the whole group.
        "backoffLimit": settings.backoff_limit * r.pods(),
        "ttlSecondsAfterFinished": settings.job_ttl_seconds,
        # Bad input fails the same way on every retry: stop at once instead of retrying.
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                   "values": [EXIT_INVALID]}},
        ]},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    if r.pods() > 1:
        # One pod per worker, each with a stable index (its hostname is <job>-<index>).
        job_spec.update({"completionMode": "Indexed", "completions": r.pods(), "parallelism": r.pods()})
    if r.deadline_seconds:
        job_spec["activeDeadlineSeconds"] = r.deadline_seconds
    if job.spec.queue_name:
        job_spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(job, uid)],
        },
        "spec": job_spec,
    }


def watched_view(job: Mapping) -> dict[str, Any]:
    """What following a trainer Job needs of it, in the same shape as the Job: the operator's index
    keeps this much per Job rather than whole Jobs (their pod templates carry the job document)."""
    meta = job["metadata"]
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    return {
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "spec": {"suspend": (job.get("spec") or {}).get("suspend")},
        "status": {"conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                                  for c in conditions],
                   "ready": status.get("ready")},
    }
