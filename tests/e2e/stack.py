"""What the end-to-end scenario needs of a cluster, whichever cluster it is.

The scenario (tests/e2e/test_scenario.py) runs against any cluster that has our images: the real
single-node cluster the tests start here (tests/cluster/node.py), or an existing cluster named by a
kubeconfig, such as the kind cluster tests/e2e/kind/run.sh creates. Everything here goes through
kubectl and helm, as a user's commands would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.conftest import restricted_namespace  # noqa: F401 - the scenario's namespaces
from tests.cluster.conftest import wait_for as cluster_wait_for

REPO = Path(__file__).resolve().parents[2]
MINIO_MANIFEST = REPO / "examples" / "local-cluster" / "minio.yaml"
MINIO_IMAGE_IN_MANIFEST = "docker.io/distillery/minio:dev"
MINIO_USER, MINIO_PASSWORD = "distillery", "distillery-e2e-password"  # manifests/minio.yaml
BUCKET = "distillery"


class CommandError(AssertionError):
    pass


def shown(args: list[str]) -> str:
    """A command line for a message: the binary's name and its arguments, without the kubeconfig."""
    out, skip = [Path(args[0]).name], False
    for arg in args[1:]:
        if skip:
            skip = False
        elif arg == "--kubeconfig":
            skip = True
        else:
            out.append(arg)
    return " ".join(out)


@dataclass
class E2ECluster:
    """A cluster with our images, and the client binaries that reach it."""

    name: str
    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path
    images: dict[str, str]  # operator, trainer, minio -> image reference the nodes can run
    work_dir: Path
    context: str | None = None
    diagnostics: Callable[[], str] = field(default=lambda: "")  # the cluster's own logs, on failure

    def base_args(self, binary: Path) -> list[str]:
        args = [str(binary), "--kubeconfig", str(self.kubeconfig)]
        if self.context:
            args += ["--kube-context" if binary == self.helm_bin else "--context", self.context]
        return args

    def run(self, args: list[str], input: str | None, check: bool, timeout: float) -> subprocess.CompletedProcess:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.work_dir / "helm-cache"),
               "HELM_CONFIG_HOME": str(self.work_dir / "helm-config"),
               "HELM_DATA_HOME": str(self.work_dir / "helm-data")}
        try:
            result = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as err:
            raise CommandError(f"{shown(args)} did not finish in {timeout:.0f} s") from err
        if check and result.returncode != 0:
            raise CommandError(f"{shown(args)} exited with {result.returncode}:\n"
                               f"{result.stderr[-4000:]}{result.stdout[-4000:]}")
        return result

    def kubectl(self, *args: Any, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run([*self.base_args(self.kubectl_bin), "--cache-dir", str(self.work_dir / "kube-cache"),
                         *map(str, args)], input, check, timeout)

    def helm(self, *args: Any, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run([*self.base_args(self.helm_bin), *map(str, args)], None, check, timeout)

    def get(self, *args: Any) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, document: dict | list[dict], namespace: str | None = None) -> None:
        docs = document if isinstance(document, list) else [document]
        items = {"apiVersion": "v1", "kind": "List", "items": docs}
        self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=json.dumps(items))


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "", interval: float = 1.0) -> Any:
    """tests/cluster's wait_for, with the scenario's argument order and a 1 s poll."""
    return cluster_wait_for(check, timeout=timeout, interval=interval, what=what, on_timeout=on_timeout)


def minio_manifest(image: str) -> str:
    """The example MinIO manifest with the cluster's MinIO image."""
    text = MINIO_MANIFEST.read_text()
    assert f"image: {MINIO_IMAGE_IN_MANIFEST}\n" in text, f"{MINIO_MANIFEST} no longer names {MINIO_IMAGE_IN_MANIFEST}"
    return text.replace(f"image: {MINIO_IMAGE_IN_MANIFEST}\n", f"image: {image}\n")


@contextlib.contextmanager
def port_forward(cluster: E2ECluster, namespace: str, target: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` to a Service, as a user reaches it from their machine; yields the local port."""
    log = cluster.work_dir / f"port-forward-{namespace}-{target.replace('/', '-')}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cluster.base_args(cluster.kubectl_bin), "port-forward", "-n", namespace, target,
             f":{port}", "--address", "127.0.0.1"],  # a free local port, printed by kubectl
            stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        def local_port() -> int | None:
            if proc.poll() is not None:
                raise CommandError(f"kubectl port-forward exited with {proc.returncode}:\n{log.read_text()}")
            found = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", log.read_text())
            return int(found.group(1)) if found else None

        yield wait_for(local_port, 60, f"kubectl port-forward to {namespace}/{target}")
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=MINIO_USER, aws_secret_access_key=MINIO_PASSWORD,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 8},
                                      connect_timeout=10, read_timeout=60))


def upload_tree(client, local: Path, prefix: str) -> None:
    """Uploads a file, or every file under a folder, to s3://BUCKET/prefix[/relative path]."""
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        key = prefix if local.is_file() else f"{prefix}/{path.relative_to(local).as_posix()}"
        client.upload_file(str(path), BUCKET, key)


def download_prefix(client, prefix: str, dest: Path) -> list[str]:
    """Downloads every object under prefix/ into dest; returns the relative keys."""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix.rstrip("/")) + 1:]
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, obj["Key"], str(dest / rel))
            keys.append(rel)
    return sorted(keys)


def find_kubectl() -> Path | None:
    from tests.cluster.controlplane import find_binaries

    found, _ = find_binaries()
    if "kubectl" in found:
        return found["kubectl"]
    on_path = shutil.which("kubectl")
    return Path(on_path) if on_path else None
