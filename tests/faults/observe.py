"""Fast reads of what the operator wrote (DistillationJobs, trainer Jobs, StudentModels), through
the API client rather than kubectl so a test can act within tens of milliseconds of a change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

GROUP, VERSION = "distillery.io", "v1alpha1"


class Observer:
    def __init__(self, cluster, namespace: str):
        from kubernetes import client

        api = cluster.api_client()
        self.custom, self.batch, self.namespace = client.CustomObjectsApi(api), client.BatchV1Api(api), namespace

    def job(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "distillationjobs", name)

    def phase(self, name: str) -> str | None:
        return (self.job(name).get("status") or {}).get("phase")

    def trainer_jobs(self, name: str) -> list:
        return self.batch.list_namespaced_job(self.namespace, label_selector=f"distillery.io/job={name}").items

    def students(self, name: str) -> list[dict]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "studentmodels")["items"]
        return [m for m in items if ((m.get("spec") or {}).get("sourceJob") or {}).get("name") == name]


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02,
         on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Calls check until it returns something truthy; API errors (a server restarting) are retried."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (ApiException, HTTPError, OSError) as err:
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})\n{on_timeout()}")
