"""The trainer Job builder: deterministic, restricted, credentials only by reference."""

import json

from distillery.api import load_job
from distillery.controller.naming import trainer_job_name, worker_service_name
from distillery.controller.settings import Settings
from distillery.controller.trainer_job import build_trainer_job, build_worker_service

BASE = {"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": "news", "namespace": "ml", "generation": 2},
        "spec": {"teacher": {"uri": "s3://m/teacher"}, "dataset": {"trainUri": "s3://d/a", "evalUri": "s3://d/b"},
                 "output": {"uri": "s3://o/news", "endpoint": "http://minio:9000", "credentialsSecret": "creds"}}}


def build(**spec):
    doc = json.loads(json.dumps(BASE))
    doc["spec"].update(spec)
    return build_trainer_job(load_job(doc), "uid-7", 2, Settings(trainer_image="trainer:1"))


def env_of(job):
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_deterministic_name_and_owner():
    a, b = build(), build()
    assert a == b
    assert a["metadata"]["name"] == "distill-news-g2"
    assert a["metadata"]["ownerReferences"] == [{"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob",
                                                  "name": "news", "uid": "uid-7", "controller": True,
                                                  "blockOwnerDeletion": True}]
    long = trainer_job_name("x" * 80, 12)
    assert len(long) <= 52 and long.endswith("-g12") and long != trainer_job_name("x" * 79 + "y", 12)


def test_pod_is_restricted_and_has_no_token():
    pod = build()["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["restartPolicy"] == "Never"
    assert {"name": "work", "mountPath": "/tmp"} in c["volumeMounts"]


def test_credentials_by_reference_and_spec_per_generation():
    env = env_of(build())
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    spec = json.loads(env["DISTILLERY_JOB"]["value"])["spec"]
    assert spec["output"]["uri"] == "s3://o/news/g2"
    # Every generation shares one teacher-output cache next to its own prefix.
    assert spec["output"]["cacheUri"] == "s3://o/news/cache"
    assert spec["teacher"]["uri"] == "s3://m/teacher"


def test_gpus_placement_deadline_and_queue():
    job = build(resources={"gpus": 2, "memory": "8Gi", "nodeSelector": {"pool": "gpu"}, "deadlineSeconds": 600,
                           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
                queueName="team-a")
    pod = job["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "2"} and res["requests"] == {"memory": "8Gi"}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_invalid_input_fails_the_job_without_retries():
    rules = build()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]


def test_work_dir_has_the_settings_size_limit():
    doc = json.loads(json.dumps(BASE))
    for settings, limit in ((Settings(trainer_image="trainer:1"), "20Gi"),
                            (Settings.from_env({"DISTILLERY_WORK_DIR_SIZE_LIMIT": "512Mi"}), "512Mi")):
        pod = build_trainer_job(load_job(doc), "uid-7", 2, settings)["spec"]["template"]["spec"]
        assert pod["volumes"] == [{"name": "work", "emptyDir": {"sizeLimit": limit}}]
        # Still the restricted pod: the size limit adds no privilege.
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_one_process_job_is_unchanged_by_the_distributed_fields():
    job = build()
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert not [name for name in env_of(job) if name.startswith("DISTILLERY_NPROC") or name.startswith("DISTILLERY_RDZV")]
    assert build_worker_service(load_job(BASE), "uid-7") is None


def test_several_workers_are_an_indexed_job_behind_a_headless_service():
    job = build(resources={"workers": 3, "gpus": 2})
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    # Each group restart fails every pod: the retries are counted per group.
    assert spec["backoffLimit"] == 3 * build()["spec"]["backoffLimit"]
    assert pod["subdomain"] == "distill-news-workers"
    env = env_of(job)
    assert env["DISTILLERY_NNODES"]["value"] == "3" and env["DISTILLERY_NPROC_PER_NODE"]["value"] == "2"
    # Worker 0's stable name: <trainer job>-<index>.<service>, resolvable in the namespace.
    assert env["DISTILLERY_RDZV_ENDPOINT"]["value"] == "distill-news-g2-0.distill-news-workers:29400"
    assert env["DISTILLERY_RDZV_ID"]["value"] == "uid-7-g2"
    doc = json.loads(json.dumps(BASE))
    doc["spec"]["resources"] = {"workers": 3}
    service = build_worker_service(load_job(doc), "uid-7")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    # It selects this job's trainer pods, whose labels the Job's template carries.
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]


def test_one_pod_with_several_processes_needs_no_service():
    job = build(resources={"processesPerWorker": 2})
    env = env_of(job)
    assert env["DISTILLERY_NPROC_PER_NODE"]["value"] == "2" and env["DISTILLERY_NNODES"]["value"] == "1"
    assert "DISTILLERY_RDZV_ENDPOINT" not in env and "completionMode" not in job["spec"]


def test_a_process_per_gpu_at_most():
    import pytest

    from distillery.api import SpecError

    doc = json.loads(json.dumps(BASE))
    doc["spec"]["resources"] = {"gpus": 1, "processesPerWorker": 2}
    with pytest.raises(SpecError, match="processesPerWorker cannot exceed gpus"):
        load_job(doc)


def test_worker_service_name_is_a_dns_label():
    long = worker_service_name("x" * 80)
    assert len(long) <= 63 and long.endswith("-workers") and long != worker_service_name("x" * 79 + "y")
