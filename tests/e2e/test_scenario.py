"""The end-to-end scenario, as a user runs it: our images, the Helm chart, real containers.

One cluster, one install, tests in order (each builds on the state the previous ones left):

1. MinIO from its image in namespace `minio`; the chart installed with `helm install --wait`; the
   operator Deployment Ready through its real probes; `helm test` passes.
2. Teachers and data uploaded to MinIO through `kubectl port-forward`; six jobs applied at once: a
   text job (a tiny BERT fine-tuned on BBC News), the digits MLP job and a decoder job (a tiny Llama
   trained on BBC text, causal-lm), all accepted; a rejected job; an invalid-input job; a job whose
   memory limit is too small. The trainers run in real
   containers under the "restricted" Pod Security profile and reach MinIO by its Service name.
3. The operator pod is deleted mid-training (its replacement carries on: one trainer Job, result
   kept), and a trainer pod is deleted mid-training (the retried pod resumes from its checkpoint).
4. A DistillationSearch of two digits students: both trials run as trainer pods at once and the
   best becomes the search's StudentModel. A job with two workers runs as two pods that
   rendezvous by DNS (torchrun, gloo) and make one student. Kueue (its real controller, in a pod)
   holds a queued two-worker job back while its quota fits one pod and admits both at once.
5. `helm upgrade` with a changed value rolls the operator; `helm uninstall` leaves the CRDs and the
   StudentModels.

The cluster: by default the real single-node cluster the tests start (``real_cluster`` in
tests/e2e/conftest.py). With DISTILLERY_E2E_KUBECONFIG set (tests/e2e/kind/run.sh does that) the
same scenario runs against that cluster, with the images named by DISTILLERY_E2E_IMAGE_OPERATOR,
DISTILLERY_E2E_IMAGE_TRAINER and DISTILLERY_E2E_IMAGE_MINIO.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.controlplane import tail
from tests.digits import digits_workspace  # noqa: F401 - session fixture: the digits teacher and data
from tests.e2e import kueue
from tests.e2e.stack import (
    BUCKET,
    MINIO_PASSWORD,
    MINIO_USER,
    REPO,
    E2ECluster,
    download_prefix,
    find_kubectl,
    minio_manifest,
    port_forward,
    restricted_namespace,
    s3_client,
    upload_tree,
    wait_for,
)
from tests.tiny_decoder import read_texts, write_tiny_llama
from tests.trainer.text.conftest import MAX_LENGTH, bbc_data, tiny_teacher  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

RELEASE, OPERATOR_NS, JOBS_NS = "distillery", "distillery", "e2e-jobs"
STORE_ENDPOINT = "http://minio.minio:9000"  # the Service name, as users write it
JOB_TIMEOUT = 900  # seconds: trainers share 2 cores with the cluster on the CI machine
PROGRESS_TIMEOUT = 600


# ----------------------------------------------------------------------------------- cluster


def _external_cluster(tmp: Path) -> E2ECluster:
    from tests.chart.test_chart import find_helm

    images = {name: os.environ.get(f"DISTILLERY_E2E_IMAGE_{name.upper()}", "") for name in ("operator", "trainer", "minio")}
    missing = [name for name, ref in images.items() if not ref]
    images["kueue"] = os.environ.get("DISTILLERY_E2E_IMAGE_KUEUE", "")  # optional: the Kueue test skips without
    helm, where = find_helm()
    kubectl = find_kubectl()
    if missing or helm is None or kubectl is None:
        pytest.fail(f"DISTILLERY_E2E_KUBECONFIG is set but images {missing} are not named "
                    f"(DISTILLERY_E2E_IMAGE_*), or helm ({where}) or kubectl is missing", pytrace=False)
    return E2ECluster(name="external", kubeconfig=Path(os.environ["DISTILLERY_E2E_KUBECONFIG"]),
                      kubectl_bin=kubectl, helm_bin=helm, images=images, work_dir=tmp,
                      context=os.environ.get("DISTILLERY_E2E_CONTEXT") or None)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> E2ECluster:
    tmp = tmp_path_factory.mktemp("e2e")
    if os.environ.get("DISTILLERY_E2E_KUBECONFIG"):
        return _external_cluster(tmp)
    return _real_node_view(request.getfixturevalue("real_cluster"), tmp)


def _real_node_view(handle, tmp: Path) -> E2ECluster:
    """The real single-node cluster of tests/e2e/conftest.py, with its components' logs for failures."""
    if handle.helm_bin is None:
        pytest.fail("helm is not built (scripts/build-control-plane.sh)", pytrace=False)

    def node_logs() -> str:
        return "\n".join(f"--- {name} log tail\n{tail(path, 2500)}" for name, path in sorted(handle.logs.items())
                         if name in ("kubelet", "containerd", "kube-proxy", "coredns", "kube-scheduler"))

    return E2ECluster(name="real node", kubeconfig=handle.kubeconfig, kubectl_bin=handle.kubectl_bin,
                      helm_bin=handle.helm_bin, work_dir=tmp, diagnostics=node_logs,
                      images={name: handle.image(name) for name in ("operator", "trainer", "minio", "kueue")})


# ------------------------------------------------------------------------------------ stack


@dataclass
class Stack:
    cluster: E2ECluster
    s3: object  # boto3 client through the port-forward
    digits: Path
    tiny_teacher: object
    bbc: object

    def dj(self, name: str) -> dict:
        return self.cluster.get("distillationjob", name, "-n", JOBS_NS)

    def status(self, name: str) -> dict:
        return self.dj(name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def trainer_jobs(self, name: str) -> list[dict]:
        return self.cluster.get("jobs", "-n", JOBS_NS, "-l", f"distillery.io/job={name}")["items"]

    def trainer_pods(self, name: str) -> list[dict]:
        return self.cluster.get("pods", "-n", JOBS_NS, "-l", f"distillery.io/job={name}")["items"]

    def operator_pods(self) -> list[dict]:
        return [p for p in self.cluster.get("pods", "-n", OPERATOR_NS,
                                            "-l", "app.kubernetes.io/component=operator")["items"]
                if not p["metadata"].get("deletionTimestamp")]

    def result(self, name: str) -> dict:
        key = self.status(name)["artifacts"]["result"].removeprefix(f"s3://{BUCKET}/")
        return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def object_keys(self, prefix: str) -> list[str]:
        found = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]

    def explain(self, *names: str) -> str:
        """What a user would look at when a job misbehaves: status, pods, logs, events, the node."""
        c, parts = self.cluster, []
        for name in names:
            parts.append(f"--- DistillationJob {name} status\n{json.dumps(self.status(name), indent=1)[:3000]}")
            for pod in self.trainer_pods(name):
                pod_name = pod["metadata"]["name"]
                logs = c.kubectl("logs", "-n", JOBS_NS, pod_name, "--tail=40", check=False)
                parts.append(f"--- pod {pod_name} {json.dumps(pod.get('status', {}).get('containerStatuses'))[:1500]}"
                             f"\n{logs.stdout}{logs.stderr}")
        parts.append(c.kubectl("get", "pods,jobs,events", "-n", JOBS_NS, "-o", "wide", check=False).stdout[-4000:])
        op = c.kubectl("logs", "-n", OPERATOR_NS, f"deploy/{RELEASE}", "--tail=60", check=False)
        parts.append(f"--- operator log\n{op.stdout[-6000:]}{op.stderr}")
        parts.append(c.diagnostics())
        return "\n".join(parts)

    def wait_final(self, name: str, timeout: float = JOB_TIMEOUT) -> dict:
        def final():
            status = self.status(name)
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        return wait_for(final, timeout, f"DistillationJob {name} to finish", lambda: self.explain(name), 2)


def _image_values(prefix: str, ref: str) -> list[str]:
    repository, _, tag = ref.rpartition(":")
    if "/" in tag or not repository:  # no tag, only a registry port
        repository, tag = ref, "latest"
    return ["--set", f"{prefix}.repository={repository}", "--set-string", f"{prefix}.tag={tag}"]


def _install_minio(cluster: E2ECluster) -> None:
    cluster.kubectl("apply", "-f", "-", input=minio_manifest(cluster.images["minio"]))
    cluster.kubectl("rollout", "status", "-n", "minio", "deployment/minio", "--timeout=300s", timeout=330)


def _install_chart(cluster: E2ECluster) -> None:
    for ns in (OPERATOR_NS, JOBS_NS):
        cluster.apply(restricted_namespace(ns))
    # Labelled: the operator hands a trainer only Secrets that opt in (store.credentialsSecret
    # would be allowed anyway; the label is what a user does for a Secret of their own).
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {
                       "name": "store-creds", "namespace": JOBS_NS,
                       "labels": {"distillery.io/usable-by-jobs": "true"}},
                   "stringData": {"AWS_ACCESS_KEY_ID": MINIO_USER, "AWS_SECRET_ACCESS_KEY": MINIO_PASSWORD}})
    cluster.helm("install", RELEASE, REPO / "charts" / "distillery", "--namespace", OPERATOR_NS, "--wait",
                 "--timeout", "8m", *_image_values("image", cluster.images["operator"]),
                 *_image_values("trainer.image", cluster.images["trainer"]),
                 "--set", f"store.endpoint={STORE_ENDPOINT}", "--set", "store.credentialsSecret=store-creds",
                 "--set", f"watchNamespaces={{{JOBS_NS}}}", "--set", "pollIntervalSeconds=2",
                 "--set", "operator.verbose=true", timeout=600)


def _upload_inputs(s3, digits: Path, teacher, bbc, decoder: Path) -> None:
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    upload_tree(s3, digits / "teacher", "teachers/digits-mlp")
    upload_tree(s3, digits / "data" / "train.npz", "data/digits/train.npz")
    upload_tree(s3, digits / "data" / "eval.npz", "data/digits/eval.npz")
    upload_tree(s3, teacher.path, "teachers/tiny-bert")
    upload_tree(s3, bbc.train, "data/bbc/train.jsonl")
    upload_tree(s3, bbc.eval, "data/bbc/eval.jsonl")
    upload_tree(s3, decoder, "teachers/tiny-llama")


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, digits_workspace: Path, tiny_teacher, bbc_data,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _install_minio(cluster)
    _install_chart(cluster)
    decoder = write_tiny_llama(tmp_path_factory.mktemp("decoder") / "tiny-llama", read_texts(bbc_data.train))
    with port_forward(cluster, "minio", "svc/minio", 9000) as port:
        s3 = s3_client(f"http://127.0.0.1:{port}")
        _upload_inputs(s3, digits_workspace, tiny_teacher, bbc_data, decoder)
        yield Stack(cluster, s3, digits_workspace, tiny_teacher, bbc_data)


# ------------------------------------------------------------------------------------- jobs


def digits_job(name: str, **spec) -> dict:
    """The digits MLP (6 blocks) into 2; the store endpoint and credentials come from the chart."""
    doc = {
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": name, "namespace": JOBS_NS},
        "spec": {
            "teacher": {"uri": f"s3://{BUCKET}/teachers/digits-mlp", "format": "torch",
                        "task": "tabular-classification"},
            "dataset": {"format": "npz", "trainUri": f"s3://{BUCKET}/data/digits/train.npz",
                        "evalUri": f"s3://{BUCKET}/data/digits/eval.npz", "featuresField": "x", "labelField": "y"},
            "student": {"method": "importance", "keepLayers": 2},
            "distillation": {"epochs": 4, "learningRate": 3e-3, "batchSize": 64, "temperature": 4.0, "alpha": 0.7},
            "benchmark": {"batchSize": 16, "iterations": 10, "warmup": 2, "threads": 1},
            "targets": {"maxAccuracyDrop": 0.5, "hardware": "cpu"},
            "output": {"uri": f"s3://{BUCKET}/runs/{name}"},
            "resources": {"memory": "2Gi", "deadlineSeconds": 1800},
        },
    }
    for section, values in spec.items():
        doc["spec"][section] = {**doc["spec"].get(section, {}), **values}
    return copy.deepcopy(doc)


def text_job(name: str) -> dict:
    """The tiny BERT (4 layers) into 2; endpoint and Secret named in the job, as users may."""
    return {
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": name, "namespace": JOBS_NS},
        "spec": {
            "teacher": {"uri": f"s3://{BUCKET}/teachers/tiny-bert", "format": "huggingface",
                        "task": "sequence-classification"},
            "dataset": {"format": "jsonl", "trainUri": f"s3://{BUCKET}/data/bbc/train.jsonl",
                        "evalUri": f"s3://{BUCKET}/data/bbc/eval.jsonl", "textField": "text",
                        "labelField": "label", "maxSequenceLength": MAX_LENGTH},
            "student": {"method": "importance", "keepLayers": 2},
            "distillation": {"temperature": 3.0, "alpha": 0.7, "epochs": 3, "learningRate": 1e-3,
                             "batchSize": 16, "seed": 0},
            "targets": {"maxAccuracyDrop": 0.5, "hardware": "cpu"},
            "benchmark": {"batchSize": 4, "sequenceLength": MAX_LENGTH, "iterations": 10, "warmup": 2,
                          "threads": 1},
            "export": {"formats": ["onnx", "safetensors"]},
            "output": {"uri": f"s3://{BUCKET}/runs/{name}", "endpoint": STORE_ENDPOINT,
                       "credentialsSecret": "store-creds"},
            "resources": {"memory": "3Gi", "deadlineSeconds": 1800},
        },
    }


def decoder_job(name: str) -> dict:
    """The tiny Llama (6 layers) into 4 by block influence, healed on its top-k next-token log-probabilities."""
    doc = text_job(name)
    spec = doc["spec"]
    spec["teacher"] = {"uri": f"s3://{BUCKET}/teachers/tiny-llama", "task": "causal-lm"}
    spec["dataset"].update(maxSequenceLength=32, maxPromptRows=20)
    spec["student"] = {"method": "importance", "importanceMetric": "block-influence", "keepLayers": 4}
    spec["distillation"] = {"temperature": 1.0, "alpha": 0.5, "epochs": 1, "learningRate": 3e-3, "batchSize": 8,
                            "topK": 16}
    spec["targets"] = {"maxPerplexityIncrease": 10.0, "hardware": "cpu"}
    spec["benchmark"] = {"batchSize": 2, "sequenceLength": 16, "decodeTokens": 8, "iterations": 3, "warmup": 1,
                         "threads": 1}
    return doc


# Long enough to be caught mid-training: 1400 small steps (about a minute on a busy 2-core machine), a checkpoint
# every 50 of them (the time rule is off: checkpointEverySeconds is large).
LONG_TRAINING = {"epochs": 8, "batchSize": 8, "checkpointEverySteps": 50, "checkpointEverySeconds": 3600}

FIRST_WAVE = {
    "text": text_job("text"),
    "digits": digits_job("digits"),
    "decoder": decoder_job("decoder"),
    "rejected": digits_job("rejected", targets={"minSpeedup": 1000.0}),
    "invalid": digits_job("invalid", dataset={"labelField": "no_such_field"}),
    "oom": digits_job("oom", resources={"memory": "100Mi"}),
}
SECOND_WAVE = {
    "operator-restart": digits_job("operator-restart", distillation=LONG_TRAINING),
    "trainer-restart": digits_job("trainer-restart", distillation=LONG_TRAINING),
}


@pytest.fixture(scope="module")
def first_wave(stack: Stack) -> dict[str, dict]:
    """The five jobs of the first wave, applied at once with kubectl, finished. (As JSON: in YAML
    the digits' `labelField: y` would need quotes, since kubectl reads a bare y as a boolean.)"""
    stack.cluster.apply(list(FIRST_WAVE.values()))
    return {name: stack.wait_final(name) for name in FIRST_WAVE}


# ------------------------------------------------------------------------------------ tests


def test_operator_deployment_is_ready_through_its_probes(stack: Stack):
    deployment = stack.cluster.get("deployment", RELEASE, "-n", OPERATOR_NS)
    assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
    [pod] = stack.operator_pods()
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", pod["status"]
    assert pod["spec"].get("nodeName"), "a real node runs the pod"
    # helm test: the CRDs are established and the operator answers /healthz through its Service.
    result = stack.cluster.helm("test", RELEASE, "--namespace", OPERATOR_NS, "--logs", "--timeout", "5m")
    assert "Phase:          Succeeded" in result.stdout or "Succeeded" in result.stdout, result.stdout


def test_text_digits_and_decoder_students_are_accepted_and_registered(stack: Stack, first_wave):
    c = stack.cluster
    for name in ("text", "digits", "decoder"):
        # What the README tells users to run; it returns at once, the job having finished.
        c.kubectl("wait", "--for=condition=Succeeded", f"distillationjob/{name}", "-n", JOBS_NS, "--timeout=60s")
        status = first_wave[name]
        assert status["phase"] == "Succeeded" and status["accepted"] is True, stack.explain(name)
        assert status["paretoScore"] > 0 and status["speedup"] > 0, status
        student = status["studentModel"]
        model = wait_for(lambda s=student: (c.get("studentmodel", s, "-n", JOBS_NS).get("status") or {})
                         .get("onFrontier") is not None and c.get("studentmodel", s, "-n", JOBS_NS),
                         120, f"StudentModel {student} frontier flag")
        assert model["status"]["onFrontier"] is True, model["status"]  # alone in its group (its own teacher)
        [job] = stack.trainer_jobs(name)
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec["securityContext"]["runAsUser"] == 1000 and pod_spec["automountServiceAccountToken"] is False
        [pod] = stack.trainer_pods(name)
        assert pod["status"]["phase"] == "Succeeded" and pod["spec"]["nodeName"], pod["status"]
        # The trainer image's user, enforced by the kubelet: the container ran as 1000.
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_artifacts_in_the_bucket_load(stack: Stack, first_wave):
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    for name in ("text", "digits", "decoder"):
        result = stack.result(name)
        assert result["decision"]["accepted"] is True
        prefix = result["artifacts"]["uri"].removeprefix(f"s3://{BUCKET}/")
        with tempfile.TemporaryDirectory() as tmp:
            keys = download_prefix(stack.s3, prefix, Path(tmp))
            for needed in ("result.json", "metrics.json", "model.onnx", "model/config.json", "model/model.safetensors",
                           "README.md"):
                assert needed in keys, (needed, keys)
            weights = load_file(str(Path(tmp) / "model" / "model.safetensors"))
            assert weights and all(np.isfinite(w).all() for w in weights.values())
            session = ort.InferenceSession(str(Path(tmp) / "model.onnx"), providers=["CPUExecutionProvider"])
            if name == "decoder":  # a Hugging Face decoder, and its KV-cache graph decodes to the same tokens
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from distillery.api.job import Hardware
                from distillery_trainer.lm.onnx_decoder import DecoderSession

                model = AutoModelForCausalLM.from_pretrained(str(Path(tmp) / "model"), use_safetensors=True)
                assert model.config.num_hidden_layers == 4
                ids = AutoTokenizer.from_pretrained(str(Path(tmp) / "model"))("shares rose", return_tensors="pt")
                with torch.no_grad():
                    generated = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
                decoded = DecoderSession(Path(tmp) / "model.onnx", Hardware.CPU, 1).greedy_decode(
                    ids["input_ids"].numpy(), steps=3)
                assert np.array_equal(decoded, generated[:, ids["input_ids"].shape[1]:].numpy())
            elif name == "digits":
                x = np.load(stack.digits / "data" / "eval.npz")["x"][:8]
                logits = session.run(None, {session.get_inputs()[0].name: x})[0]
                assert logits.shape == (8, 10)
            else:
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                model = AutoModelForSequenceClassification.from_pretrained(str(Path(tmp) / "model"))
                assert model.config.num_hidden_layers == 2
                tokenizer = AutoTokenizer.from_pretrained(str(Path(tmp) / "model"))
                enc = tokenizer(["Shares rose sharply after the results."], return_tensors="np",
                                padding="max_length", truncation=True, max_length=MAX_LENGTH)
                feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
                assert session.run(None, feeds)[0].shape == (1, len(stack.bbc.classes))


def test_rejected_student_is_measured_and_not_registered(stack: Stack, first_wave):
    status = first_wave["rejected"]
    assert status["phase"] == "Succeeded" and status["accepted"] is False, stack.explain("rejected")
    assert any("speedup" in reason for reason in status["decision"]["reasons"]), status["decision"]
    assert not status.get("studentModel")
    assert stack.condition("rejected", "Accepted")["reason"] == "Rejected"


def test_invalid_input_fails_once_with_the_trainers_message(stack: Stack, first_wave):
    status = first_wave["invalid"]
    succeeded = stack.condition("invalid", "Succeeded")
    assert status["phase"] == "Failed" and succeeded["status"] == "False", stack.explain("invalid")
    assert succeeded["reason"] == "InvalidInput", succeeded
    assert "no_such_field" in succeeded["message"], succeeded  # the trainer names the field
    # podFailurePolicy on the trainer's real exit code 2: one pod, no retry.
    [job] = stack.trainer_jobs("invalid")
    assert job["status"].get("failed") == 1, job["status"]
    pods = stack.trainer_pods("invalid")
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2


def test_trainer_over_its_memory_limit_is_oomkilled(stack: Stack, first_wave):
    status = first_wave["oom"]
    succeeded = stack.condition("oom", "Succeeded")
    assert status["phase"] == "Failed" and succeeded["reason"] == "OOMKilled", stack.explain("oom")
    terminated = [p["status"]["containerStatuses"][0]["state"].get("terminated") or {}
                  for p in stack.trainer_pods("oom")]
    assert terminated and all(t.get("reason") == "OOMKilled" for t in terminated), terminated


def _checkpoint_written(stack: Stack, name: str) -> bool:
    generation = stack.dj(name)["metadata"]["generation"]
    return any("/checkpoints/" in key for key in stack.object_keys(f"runs/{name}/g{generation}/"))


def test_restarts_mid_training_lose_nothing(stack: Stack, first_wave):
    c = stack.cluster
    c.apply(list(SECOND_WAVE.values()))
    # Both are training, with a checkpoint in the store.
    for name in SECOND_WAVE:
        wait_for(lambda n=name: _checkpoint_written(stack, n), PROGRESS_TIMEOUT,
                 f"a checkpoint of {name}", lambda n=name: stack.explain(n), 1)
    [trainer_pod] = stack.trainer_pods("trainer-restart")
    [old_operator] = stack.operator_pods()
    c.kubectl("delete", "pod", "-n", JOBS_NS, trainer_pod["metadata"]["name"], "--wait=false")
    c.kubectl("delete", "pod", "-n", OPERATOR_NS, old_operator["metadata"]["name"], "--wait=false")
    new_operator = wait_for(lambda: [p for p in stack.operator_pods()
                                     if p["metadata"]["uid"] != old_operator["metadata"]["uid"]
                                     and any(x["type"] == "Ready" and x["status"] == "True"
                                             for x in p["status"].get("conditions") or [])],
                            300, "a new Ready operator pod", lambda: stack.explain())
    assert new_operator

    for name in SECOND_WAVE:
        status = stack.wait_final(name)
        assert status["phase"] == "Succeeded" and status["accepted"] is True, stack.explain(name)
        assert len(stack.trainer_jobs(name)) == 1, "one trainer Job per generation, also across operator restarts"
        assert status["studentModel"]

    # The operator's replacement kept the result and did not restart the trainer.
    operator_run = stack.result("operator-restart")
    assert (operator_run["training"] or {}).get("resumedFromStep") is None
    assert len(stack.trainer_pods("operator-restart")) == 1

    # The retried trainer resumed from its checkpoint: its own record says from which step, and it
    # did not repeat the steps before it.
    training = stack.result("trainer-restart")["training"]
    assert (training.get("resumedFromStep") or 0) >= 50, training
    assert training["resumedFromStep"] < training["steps"]
    [retried] = stack.trainer_pods("trainer-restart")  # the deleted pod is gone; the Job made this one
    assert retried["metadata"]["uid"] != trainer_pod["metadata"]["uid"]
    log = c.kubectl("logs", "-n", JOBS_NS, retried["metadata"]["name"]).stdout
    assert f"resuming from step {training['resumedFromStep']}" in log, log[-3000:]


def test_search_runs_its_trials_as_trainer_pods_and_registers_the_best(stack: Stack):
    """A DistillationSearch over two digits students: the operator in its pod creates both trials
    at once, each runs as a trainer pod, and the best (by latency) becomes the search's student."""
    c = stack.cluster
    template = digits_job("search-template")["spec"]
    template["output"] = {"uri": f"s3://{BUCKET}/searches/digits"}
    search = {
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationSearch",
        "metadata": {"name": "digits-search", "namespace": JOBS_NS},
        "spec": {"template": template, "space": {"keepLayers": {"min": 1, "max": 2}},
                 "optimizeFor": "latency", "budget": {"maxTrials": 2, "parallelTrials": 2}},
    }
    c.apply(search)

    def final():
        status = c.get("distillationsearch", "digits-search", "-n", JOBS_NS).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(final, JOB_TIMEOUT, "the search to finish",
                      lambda: stack.explain("digits-search-t000", "digits-search-t001"), 2)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert status["algorithm"] == "grid" and status["trialsSucceeded"] == 2
    rows = {row["name"]: row for row in status["trials"]}
    assert set(rows) == {"digits-search-t000", "digits-search-t001"}
    for name in rows:
        own = stack.status(name)
        assert own["phase"] == "Succeeded" and len(stack.trainer_pods(name)) == 1
        assert rows[name]["latencyMs"] == own["student"]["latencyP50Ms"]
        assert own["artifacts"]["result"].startswith(f"s3://{BUCKET}/searches/digits/trials/{name}/")
        assert stack.result(name)["job"] == name  # the trial's own result.json, in the bucket
    accepted = [n for n in sorted(rows) if rows[n]["accepted"]]
    assert status["bestTrial"] == min(accepted, key=lambda n: (rows[n]["latencyMs"], -rows[n]["accuracy"]))
    best = stack.status(status["bestTrial"])
    assert status["studentModel"] == best["studentModel"]
    student = c.get("studentmodel", status["studentModel"], "-n", JOBS_NS)
    assert student["spec"]["recipe"]["keepLayers"] == rows[status["bestTrial"]]["params"]["keepLayers"]


def test_two_workers_rendezvous_by_dns_and_make_one_student(stack: Stack):
    """resources.workers: 2: an Indexed Job of two trainer pods behind a headless Service; torchrun
    in each pod meets the other at worker 0's DNS name, they train data-parallel (gloo), and the
    job ends with one result and one StudentModel."""
    c = stack.cluster
    c.apply(digits_job("workers", resources={"workers": 2}))
    status = stack.wait_final("workers")
    assert status["phase"] == "Succeeded" and status["accepted"] is True, stack.explain("workers")
    [job] = stack.trainer_jobs("workers")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    pods = stack.trainer_pods("workers")
    assert len(pods) == 2 and all(p["status"]["phase"] == "Succeeded" for p in pods), stack.explain("workers")
    service = c.get("service", "distill-workers-workers", "-n", JOBS_NS)
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["ownerReferences"][0]["name"] == "workers"
    logs = "".join(c.kubectl("logs", "-n", JOBS_NS, p["metadata"]["name"]).stdout for p in pods)
    assert logs.count("starting torchrun --nproc-per-node=1 --max-restarts=0 --nnodes=2") == 2, logs[-3000:]
    result = stack.result("workers")
    assert result["training"]["worldSize"] == 2 and result["training"]["steps"] == 4 * 22
    students = [m for m in c.get("studentmodels", "-n", JOBS_NS)["items"]
                if m["metadata"]["name"] == status["studentModel"]]
    assert len(students) == 1


def _checkpoint_step(stack: Stack, name: str) -> int:
    """The step of the newest complete checkpoint of the job's current generation (0: none)."""
    generation = stack.dj(name)["metadata"]["generation"]
    key = f"runs/{name}/g{generation}/checkpoints/latest.json"
    if key not in stack.object_keys(key):
        return 0
    return int(json.loads(stack.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["state"]["global_step"])


def test_a_deleted_worker_pod_restarts_the_group_from_the_checkpoint(stack: Stack):
    """Worker 1 of a two-pod job is deleted mid-training: the Job replaces it, worker 0's
    processes fail on the lost peer and their pod is replaced too, the new pods rendezvous again,
    and training resumes from the last checkpoint (Job retries, not torchrun restarts)."""
    c = stack.cluster
    c.apply(digits_job("workers-kill", resources={"workers": 2}, distillation=LONG_TRAINING))
    # Step 0 is the student rank 0 shares; wait for a checkpoint written by training.
    wait_for(lambda: _checkpoint_step(stack, "workers-kill") >= 50, PROGRESS_TIMEOUT,
             "a training checkpoint of workers-kill", lambda: stack.explain("workers-kill"), 1)
    [worker1] = [p for p in stack.trainer_pods("workers-kill")
                 if p["metadata"]["labels"].get("batch.kubernetes.io/job-completion-index") == "1"]
    c.kubectl("delete", "pod", "-n", JOBS_NS, worker1["metadata"]["name"], "--wait=false")
    status = stack.wait_final("workers-kill")
    assert status["phase"] == "Succeeded" and status["accepted"] is True, stack.explain("workers-kill")
    training = stack.result("workers-kill")["training"]
    assert training["worldSize"] == 2
    assert (training.get("resumedFromStep") or 0) >= 50, training
    assert training["steps"] == LONG_TRAINING["epochs"] * 175  # 1400 rows / batch 8: every step once
    # The deleted pod and its peer count as the Job's failures; both indexes were run again.
    [job] = stack.trainer_jobs("workers-kill")
    assert job["status"]["failed"] >= 2 and job["status"]["completedIndexes"] == "0,1", job["status"]


def _install_kueue(cluster: E2ECluster) -> None:
    """Kueue's CRDs (server-side: they are too large for the last-applied annotation), then its
    controller, ready through its probe."""
    crds = kueue.crds_dir()
    assert any(crds.glob("*.yaml")), f"no Kueue CRDs in {crds} (scripts/setup-test-tools.sh copies them)"
    cluster.kubectl("apply", "--server-side", "-f", crds, timeout=180)
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s", timeout=150)
    certificate, key = kueue.self_signed_certificate(cluster.work_dir / "kueue-certs")
    cluster.apply(kueue.controller_manifests(cluster.images["kueue"], certificate, key))
    cluster.kubectl("rollout", "status", "-n", kueue.NAMESPACE, f"deployment/{kueue.NAME}", "--timeout=300s",
                    timeout=330)


def _workload_of(stack: Stack, name: str) -> dict | None:
    """The Kueue Workload of a DistillationJob's trainer Job (Kueue names it after the Job)."""
    jobs = stack.trainer_jobs(name)
    if not jobs:
        return None
    uid = jobs[0]["metadata"]["uid"]
    return next((w for w in stack.cluster.get("workloads.kueue.x-k8s.io", "-n", JOBS_NS)["items"]
                 if any(o.get("uid") == uid for o in w["metadata"].get("ownerReferences") or [])), None)


def _kueue_condition(workload: dict | None, type_: str) -> dict:
    return next((c for c in ((workload or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def test_kueue_admits_a_two_worker_job_only_when_both_pods_fit(stack: Stack):
    """Gang admission, with the real Kueue controller: a queued job of two workers (2Gi each) waits,
    suspended and without pods, while its ClusterQueue has room for one (3Gi); once the quota holds
    both (5Gi), Kueue admits the Job as one Workload, both pods start together, and the job ends
    with one student trained by both."""
    c = stack.cluster
    if not c.images.get("kueue"):
        pytest.skip("no Kueue image named (DISTILLERY_E2E_IMAGE_KUEUE) for this external cluster")
    _install_kueue(c)
    c.apply(kueue.queue_manifests(JOBS_NS, "team", "distillery-e2e", cpu="8", memory="3Gi"))
    job = digits_job("queued", resources={"workers": 2})
    job["spec"]["queueName"] = "team"
    c.apply(job)

    def pending_for_quota():
        reserved = _kueue_condition(_workload_of(stack, "queued"), "QuotaReserved")
        return reserved if reserved.get("status") == "False" and reserved.get("reason") == "Pending" else None

    reserved = wait_for(pending_for_quota, PROGRESS_TIMEOUT, "Kueue to hold the queued job's Workload back",
                        lambda: stack.explain("queued") + json.dumps(_workload_of(stack, "queued"), indent=1), 1)
    assert "memory" in reserved["message"], reserved  # what it waits for, in Kueue's words
    [trainer] = stack.trainer_jobs("queued")
    assert trainer["spec"]["suspend"] is True and trainer["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
    assert stack.trainer_pods("queued") == [] and stack.status("queued")["phase"] == "Pending"
    workload = _workload_of(stack, "queued")
    assert [p["count"] for p in workload["spec"]["podSets"]] == [2]  # one Workload for both pods

    c.apply(kueue.queue_manifests(JOBS_NS, "team", "distillery-e2e", cpu="8", memory="5Gi"))
    status = stack.wait_final("queued")
    assert status["phase"] == "Succeeded" and status["accepted"] is True, stack.explain("queued")
    assert _kueue_condition(_workload_of(stack, "queued"), "Admitted").get("status") == "True"
    pods = stack.trainer_pods("queued")
    assert len(pods) == 2 and all(p["status"]["phase"] == "Succeeded" for p in pods), stack.explain("queued")
    assert stack.result("queued")["training"]["worldSize"] == 2


def test_helm_upgrade_rolls_the_operator(stack: Stack):
    c = stack.cluster
    [before] = stack.operator_pods()
    c.helm("upgrade", RELEASE, REPO / "charts" / "distillery", "--namespace", OPERATOR_NS, "--reuse-values",
           "--set", "pollIntervalSeconds=3", "--wait", "--timeout", "8m", timeout=600)
    [after] = wait_for(lambda: [p for p in stack.operator_pods() if p["metadata"]["uid"] != before["metadata"]["uid"]],
                       300, "the upgraded operator pod")
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    assert env["DISTILLERY_POLL_INTERVAL_SECONDS"] == "3"
    wait_for(lambda: c.get("deployment", RELEASE, "-n", OPERATOR_NS)["status"].get("readyReplicas") == 1,
             300, "the upgraded operator to be Ready")


def test_helm_uninstall_keeps_crds_and_students(stack: Stack, first_wave):
    c = stack.cluster
    students = {item["metadata"]["name"] for item in c.get("studentmodels", "-n", JOBS_NS)["items"]}
    assert {first_wave["text"]["studentModel"], first_wave["digits"]["studentModel"]} <= students
    c.helm("uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", "--timeout", "5m", timeout=400)
    for crd in ("distillationjobs.distillery.io", "studentmodels.distillery.io"):
        c.kubectl("get", "crd", crd)
    left = {item["metadata"]["name"] for item in c.get("studentmodels", "-n", JOBS_NS)["items"]}
    assert students <= left
    wait_for(lambda: not stack.operator_pods(), 180, "the operator pod to go")
