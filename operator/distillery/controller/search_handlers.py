"""kopf wiring of DistillationSearch: observe the search and its trials, decide (search_decide.py,
pure), execute: create trial DistillationJobs, patch the search's status, post its final Event.

The trials are listed afresh on every look (a LIST is a quorum read, so a trial created by the
previous look is always seen and its index never reused); the registry's students come from the
operator's `students_by_group` index, read only when a trial is about to start. Create, resume, update and the timer run the same look, one at a time per
search; the spec is never written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from distillery.api.base import GROUP, VERSION
from distillery.controller import metrics, registry, search_decide
from distillery.controller import search_naming as sn
from distillery.controller.context import OperatorContext
from distillery.controller.decide import Event
from distillery.controller.search_decide import (
    CreateTrial,
    PatchSearchStatus,
    ReadRegistry,
    ReadSpaceCheck,
    SearchObserved,
    decide_search,
    finished,
)

log = logging.getLogger(__name__)

SEARCHES = "distillationsearches"
JOBS = "distillationjobs"

# One look at a time per search (kopf runs a timer beside the change handlers); keyed by uid.
_looking: dict[str, asyncio.Lock] = {}


# ----------------------------------------------------------------------------- Kubernetes reads and writes


def list_trials(kube: Any, namespace: str, search: str) -> list[dict]:
    return kube.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, JOBS, label_selector=sn.trial_selector(search)).get("items", [])


def read_job(kube: Any, namespace: str, name: str) -> dict:
    """A DistillationJob as stored; {} when there is none."""
    try:
        return kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, JOBS, name)
    except ApiException as err:
        if err.status != 404:
            raise
    return {}


def create_trial(kube: Any, manifest: dict) -> dict | None:
    """None when created; the object holding the name when it already exists (409)."""
    meta = manifest["metadata"]
    try:
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], JOBS, manifest)
        return None
    except ApiException as err:
        if err.status != 409:
            raise
    return kube.custom.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], JOBS, meta["name"])


# ----------------------------------------------------------------------------- observing


def observed_search(meta: Mapping, spec: Mapping, status: Mapping | None) -> SearchObserved:
    return SearchObserved(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                          generation=meta["generation"], spec=dict(spec), status=dict(status or {}))


def _trouble(err: ApiException, what: str) -> kopf.TemporaryError:
    # The API server's message says which permission or object is missing: kopf logs it.
    return kopf.TemporaryError(f"{what}: the API server answered {err.status}: {api_message(err)}", delay=10)


def group_students(ctx: OperatorContext, index, namespace: str, group: str) -> list[Mapping]:
    """The live StudentModels of one frontier group from the operator's index (reduced views that
    keep each model's recipe, paretoScore and frontier status). Call it in the event loop only,
    where kopf changes its indexes, so the copy is consistent."""
    return registry.live(list(index.get((namespace, group), ())), ctx.gone)


async def look(ctx: OperatorContext, obs: SearchObserved, body, patch, students_index) -> None:
    """List the trials, decide, and execute; again with the space's check job or the registry
    when the decision asks for them."""
    try:
        jobs = await ctx.api(list_trials, ctx.kube, obs.namespace, obs.name)
    except ApiException as err:
        raise _trouble(err, "listing the search's trials") from None
    students = check = None
    for _ in range(3):  # at most: the check, the registry, the decision
        # In a thread: the sampler rebuilds an Optuna study, which must not hold up the event loop.
        actions = await asyncio.to_thread(decide_search, obs, jobs, students, datetime.now(UTC), None, check)
        wanted_check = [a for a in actions if isinstance(a, ReadSpaceCheck)]
        wanted_students = [a for a in actions if isinstance(a, ReadRegistry)]
        if wanted_check:
            try:
                check = await ctx.api(read_job, ctx.kube, obs.namespace, wanted_check[0].name)
            except ApiException as err:
                raise _trouble(err, f"reading the space's check {wanted_check[0].name}") from None
        elif wanted_students:
            students = group_students(ctx, students_index, obs.namespace, wanted_students[0].group)
        else:
            break
    await execute(ctx, obs, body, patch, actions, check)


async def execute(ctx: OperatorContext, obs: SearchObserved, body, patch, actions: list,
                  check: dict | None) -> None:
    """Create the trials first, then the status (kopf patches it after the handler), then Events.
    A trial the API server refuses, or whose name another job holds, fails the search instead."""
    for action in actions:
        if not isinstance(action, CreateTrial):
            continue
        problem = None
        try:
            holder = await ctx.api(create_trial, ctx.kube, action.manifest)
        except ApiException as err:
            if err.status not in (400, 422):
                raise _trouble(err, f"creating trial {action.name}") from None
            problem = search_decide.trial_refused(action.name, api_message(err))
        else:
            if holder is None:
                log.info("search %s/%s: created trial %s", obs.namespace, obs.name, action.name)
            elif ((holder.get("metadata") or {}).get("labels") or {}).get(action.owner_label) != obs.name:
                problem = search_decide.name_taken(obs, action.name, action.owner_label)
        if problem is not None:
            # Listed again: the trials this look created before the refusal belong in the table.
            try:
                jobs = await ctx.api(list_trials, ctx.kube, obs.namespace, obs.name)
            except ApiException as err:
                raise _trouble(err, "listing the search's trials") from None
            actions = await asyncio.to_thread(decide_search, obs, jobs, [], datetime.now(UTC), problem, check)
            break
    for action in actions:
        if isinstance(action, PatchSearchStatus):
            patch.status.update(action.patch)
        elif isinstance(action, Event):
            # Not kopf.info: posting.level keeps handler logs out of Events.
            kopf.event(body, type="Warning" if action.warning else "Normal", reason=action.reason,
                       message=action.message)
    if search_decide.finished_after(obs, actions):
        ctx.finished[obs.uid] = obs.generation


def api_message(err: ApiException) -> str:
    """The API server's own message (the field and the rule) from an error's body."""
    try:
        return str(json.loads(err.body).get("message") or err.reason)[:1500]
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


# ----------------------------------------------------------------------------- handlers


async def reconcile_search(body, meta, spec, status, patch, memo: OperatorContext, students_by_group, **_) -> None:
    obs = observed_search(meta, spec, status)
    if finished(obs) or memo.finished.get(obs.uid) == obs.generation:
        return  # done (the watch may not have brought the final status back yet)
    lock = _looking.setdefault(obs.uid, asyncio.Lock())
    async with lock:
        with metrics.observed("search"):
            await look(memo, obs, body, patch, students_by_group)
    if memo.finished.get(obs.uid) == obs.generation:
        _looking.pop(obs.uid, None)


def needs_looking(status, meta, **_) -> bool:
    """The timer follows a search until it is final for its generation with no trial running."""
    s = status or {}
    return not (s.get("phase") in ("Succeeded", "Failed") and s.get("observedGeneration") == meta.get("generation")
                and not s.get("trialsRunning"))


async def forget_search(meta, memo: OperatorContext, **_) -> None:
    # The trials go with the owner references; only what this process kept goes here.
    memo.finished.pop(meta["uid"], None)
    _looking.pop(meta["uid"], None)


def register(reg: kopf.OperatorRegistry, poll_interval_s: float) -> kopf.OperatorRegistry:
    """Put the DistillationSearch handlers into `reg` (handlers.register calls this)."""
    kopf.on.resume(GROUP, VERSION, SEARCHES, registry=reg)(reconcile_search)
    kopf.on.create(GROUP, VERSION, SEARCHES, registry=reg)(reconcile_search)
    kopf.on.update(GROUP, VERSION, SEARCHES, field="spec", registry=reg)(reconcile_search)
    kopf.timer(GROUP, VERSION, SEARCHES, id="search_follow", interval=poll_interval_s, when=needs_looking,
               registry=reg)(reconcile_search)
    # The timer puts kopf's finalizer on every search anyway: this handler only drops local state.
    kopf.on.delete(GROUP, VERSION, SEARCHES, id="forget_search", registry=reg)(forget_search)
    return reg
