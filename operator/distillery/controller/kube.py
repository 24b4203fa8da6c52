"""Thin Kubernetes I/O the handlers use (the official client; kopf does its own watching and
fills the indexes the handlers read instead of listing)."""

from __future__ import annotations

import base64
import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from distillery.api.base import GROUP, VERSION


def load_config() -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    @classmethod
    def connect(cls) -> Kube:
        load_config()
        return cls()

    def __init__(self) -> None:
        self.api = client.ApiClient()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # -- trainer Jobs
    def create_job(self, body: dict) -> bool:
        """True when created, False when it already existed (creation is idempotent)."""
        try:
            self.batch.create_namespaced_job(body["metadata"]["namespace"], body)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def create_service(self, body: dict) -> bool:
        """True when created, False when it already existed."""
        try:
            self.core.create_namespaced_service(body["metadata"]["namespace"], body)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def read_job(self, namespace: str, name: str) -> dict | None:
        try:
            return self.api.sanitize_for_serialization(self.batch.read_namespaced_job(name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector)
        return [self.api.sanitize_for_serialization(j) for j in jobs.items]

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            # In the body: the API server ignores query parameters on a DELETE that has one, and
            # a Job deleted without propagation orphans its pods (the trainer would run on).
            self.batch.delete_namespaced_job(
                name, namespace, body=client.V1DeleteOptions(propagation_policy="Background"))
        except ApiException as err:
            if err.status != 404:
                raise

    def job_pods(self, namespace: str, job_name: str) -> list[dict]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
        return [self.api.sanitize_for_serialization(p) for p in pods.items]

    # -- Secrets (read by name only; never listed, never logged)
    def read_secret(self, namespace: str, name: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        """(metadata: name, namespace, labels, annotations; decoded data), or None when absent."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        meta = secret.metadata
        metadata = {"name": meta.name, "namespace": meta.namespace, "labels": dict(meta.labels or {}),
                    "annotations": dict(meta.annotations or {})}
        data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}
        return metadata, data

    # -- StudentModels
    def create_student_model(self, body: dict) -> bool:
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, body["metadata"]["namespace"], "studentmodels", body)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def read_student_model(self, namespace: str, name: str) -> dict | None:
        """One StudentModel as stored, or None when there is none by that name."""
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "studentmodels", name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_student_models_in(self, namespace: str | None) -> list[dict]:
        """All StudentModels of one namespace, or of the cluster when namespace is None."""
        if namespace is None:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, "studentmodels").get("items", [])
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "studentmodels").get("items", [])

    def patch_student_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "studentmodels", name, {"status": status})
        except ApiException as err:
            if err.status != 404:  # deleted meanwhile: nothing to update
                raise


def termination_message(pod: dict) -> tuple[dict | None, str | None]:
    """(the trainer's JSON message, the container's terminated reason such as OOMKilled)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
        if terminated:
            text = terminated.get("message") or ""
            try:
                return json.loads(text), terminated.get("reason")
            except ValueError:
                return ({"ok": False, "message": text.strip()[-1000:]} if text else None), terminated.get("reason")
    return None, None
