"""What the operator does for a DistillationSearch: observed state in, actions out (no I/O, no kopf).

search_handlers.py observes the search, its trials (the DistillationJobs labelled with its name,
listed fresh on every look) and, when a trial is about to start and the search learns from the
registry, the StudentModels of the template's frontier group; then it executes what
`decide_search` returns. Everything the search knows is rebuilt from its trials (their index,
parameters and seed are on the trials themselves), so a restarted operator decides the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import ValidationError

from distillery.api.base import API_VERSION
from distillery.api.load import describe_validation_error
from distillery.api.search import (
    DistillationSearchSpec,
    DistillationSearchStatus,
    Objective,
    SearchProgress,
    SearchTrial,
    SpaceCheck,
    TrialParams,
)
from distillery.controller import naming, registry
from distillery.controller import search_naming as sn
from distillery.controller import status as st
from distillery.controller.decide import FINAL, Event
from distillery.search.sampler import TrialRecord, next_params
from distillery.search.space import (
    check_space,
    complete_point,
    grid_size,
    point_key,
    resolve_algorithm,
    trial_spec,
    trial_targets,
)
from distillery.search.trials import best_trial, frontier_of, seeds_from_students

SUCCEEDED, STALLED = st.SUCCEEDED, st.STALLED
# A trial that failed for one of these reasons would fail the same way again (its input is wrong,
# and every trial shares the template), so the search fails at once instead of spending its budget.
INVALID_TRIAL_REASONS = frozenset({"InvalidInput", "InvalidSpec", "PolicyViolation", "SecretNotAllowed",
                                   "TrainerJobRejected"})
TRIAL_MESSAGE_CHARS = 300
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# ----------------------------------------------------------------------------- what was observed


@dataclass(frozen=True)
class SearchObserved:
    """The DistillationSearch as kopf delivered it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def conditions(self) -> list[dict]:
        return list(self.status.get("conditions") or [])


@dataclass(frozen=True)
class ObservedTrial:
    """One of the search's DistillationJobs, as far as the search reads it."""

    name: str
    index: int
    params: TrialParams | None  # None: its params annotation is missing or unreadable
    seeded: bool
    seeded_from: str | None
    status: Mapping[str, Any]
    template_digest: str | None = None  # None: a trial made before trials carried it

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def final(self) -> bool:
        return self.phase in FINAL

    def failure_reason(self) -> str | None:
        if self.phase != "Failed":
            return None
        cond = next((c for c in self.status.get("conditions") or [] if c.get("type") == SUCCEEDED), {})
        return cond.get("reason")


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class CreateTrial:
    manifest: dict[str, Any]
    # The label naming the search on what it creates: an object of that name without it is not ours.
    owner_label: ClassVar[str] = sn.LABEL_SEARCH

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]


@dataclass(frozen=True)
class CreateSpaceCheck(CreateTrial):
    """The dry run that checks the space against the teacher before the first trial."""

    owner_label: ClassVar[str] = sn.LABEL_SPACE_CHECK


@dataclass(frozen=True)
class PatchSearchStatus:
    """A merge patch of the search's status (camelCase; None clears a field)."""

    patch: dict[str, Any]


@dataclass(frozen=True)
class ReadRegistry:
    """Decide again with the StudentModels of this frontier group (a trial is about to start)."""

    group: str


@dataclass(frozen=True)
class ReadSpaceCheck:
    """Decide again with this DistillationJob (the space's check) as stored: {} when there is none."""

    name: str


SearchAction = CreateTrial | PatchSearchStatus | ReadRegistry | ReadSpaceCheck | Event


# ----------------------------------------------------------------------------- reading trials


def observed_trials(jobs: list[Mapping]) -> list[ObservedTrial]:
    """The search's trials (DistillationJobs as stored) in index order; a job without a valid
    index label is not one of its trials."""
    trials = []
    for job in jobs:
        meta = job.get("metadata") or {}
        index = sn.index_from_label((meta.get("labels") or {}).get(sn.LABEL_TRIAL_INDEX))
        if index is None:
            continue
        notes = meta.get("annotations") or {}
        trials.append(ObservedTrial(
            name=meta["name"], index=index, params=sn.params_from_annotation(notes.get(sn.ANNOTATION_PARAMS)),
            seeded=notes.get(sn.ANNOTATION_SEEDED) == "true", seeded_from=notes.get(sn.ANNOTATION_SEEDED_FROM),
            status=dict(job.get("status") or {}), template_digest=notes.get(sn.ANNOTATION_TEMPLATE_DIGEST)))
    return sorted(trials, key=lambda t: (t.index, t.name))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def trial_row(trial: ObservedTrial) -> SearchTrial:
    """The status table's row of a trial, from the trial's own status (the chosen variant's metrics)."""
    status = trial.status
    measured = trial.phase == "Succeeded"
    student = (status.get("student") or {}) if measured else {}
    size = _number(student.get("sizeBytes"))
    accepted = status.get("accepted")
    message = status.get("message")
    model = status.get("studentModel")
    return SearchTrial(
        name=trial.name, index=trial.index, params=trial.params or TrialParams(), phase=trial.phase,
        seeded=trial.seeded, accuracy=_number(student.get("accuracy")),
        latency_ms=_number(student.get("latencyP50Ms")), size_bytes=int(size) if size is not None else None,
        pareto_score=_number(status.get("paretoScore")) if measured else None,
        variant=str(status.get("variant") or "fp32") if measured else None,
        accepted=accepted if isinstance(accepted, bool) else None,
        student_model=model if isinstance(model, str) and model else None,
        message=message[:TRIAL_MESSAGE_CHARS] if isinstance(message, str) and message else None)


def records_of(trials: list[ObservedTrial], rows: list[SearchTrial], objectives: list[Objective]) -> list[TrialRecord]:
    """The sampler's history: every trial with known params, measured values for finished ones."""
    out = []
    for trial, row in zip(trials, rows, strict=True):
        if trial.params is None:
            continue
        values = None
        if trial.final:
            raw = {Objective.ACCURACY: row.accuracy, Objective.LATENCY: row.latency_ms, Objective.SIZE: row.size_bytes}
            picked = tuple(raw[Objective(o)] for o in objectives)
            values = None if any(v is None for v in picked) else tuple(float(v) for v in picked)
        out.append(TrialRecord(params=trial.params, values=values, finished=trial.final))
    return out


# ----------------------------------------------------------------------------- building trials


def owner_reference(obs: SearchObserved) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "DistillationSearch", "name": obs.name, "uid": obs.uid,
            "controller": True, "blockOwnerDeletion": True}


def trial_manifest(obs: SearchObserved, spec: DistillationSearchSpec, index: int, params: TrialParams,
                   seeded_from: str | None) -> dict[str, Any]:
    """The trial's DistillationJob. Raises ValueError naming the field when the point gives an
    invalid job spec."""
    name = sn.trial_name(obs.name, index)
    output = spec.template.output
    base = output.uri.rstrip("/")
    job_spec = trial_spec(spec.template, params, output_uri=f"{base}/trials/{name}",
                          cache_uri=output.cache_uri or f"{base}/cache", targets=trial_targets(spec))
    annotations = {sn.ANNOTATION_PARAMS: sn.params_annotation(params),
                   sn.ANNOTATION_SEEDED: "true" if seeded_from is not None else "false",
                   sn.ANNOTATION_TEMPLATE_DIGEST: template_digest_of(spec)}
    if seeded_from:
        annotations[sn.ANNOTATION_SEEDED_FROM] = seeded_from
    return {
        "apiVersion": API_VERSION,
        "kind": "DistillationJob",
        "metadata": {
            "name": name,
            "namespace": obs.namespace,
            "labels": {sn.LABEL_SEARCH: obs.name, sn.LABEL_TRIAL_INDEX: str(index),
                       naming.LABEL_MANAGED_BY: naming.MANAGER, naming.LABEL_COMPONENT: sn.COMPONENT_TRIAL},
            "annotations": annotations,
            "ownerReferences": [owner_reference(obs)],
        },
        "spec": job_spec.to_wire(),
    }


def known_depth(spec: DistillationSearchSpec) -> int | None:
    """The depth the student is cut from when the spec itself says it (a built-in architecture)."""
    student = spec.template.student
    return student.architecture.num_blocks if student.architecture is not None and student.base is None else None


def needs_space_check(spec: DistillationSearchSpec, trials: list[ObservedTrial], digest: str) -> bool:
    """Whether the space needs the teacher's depth, which only a pod reads (the operator never reads
    models), while no trial has started under this template and space (its trainer checks it)."""
    return (spec.space.keep_layers is not None and known_depth(spec) is None
            and not any(t.template_digest == digest for t in trials))


def space_check_manifest(obs: SearchObserved, spec: DistillationSearchSpec, digest: str) -> dict[str, Any]:
    """The dry run of the space's deepest student (spec.dryRun): if the teacher has that many layers,
    every keepLayers of the space fits. Raises ValueError naming the field for an invalid point."""
    deepest = TrialParams(keep_layers=spec.space.keep_layers.max)
    base = spec.template.output.uri.rstrip("/")
    job_spec = trial_spec(spec.template, deepest, output_uri=f"{base}/space-check",
                          cache_uri=spec.template.output.cache_uri or f"{base}/cache", targets=trial_targets(spec))
    job_spec.dry_run = True
    return {
        "apiVersion": API_VERSION,
        "kind": "DistillationJob",
        "metadata": {
            "name": sn.space_check_name(obs.name, digest),
            "namespace": obs.namespace,
            "labels": {sn.LABEL_SPACE_CHECK: obs.name, naming.LABEL_MANAGED_BY: naming.MANAGER,
                       naming.LABEL_COMPONENT: sn.COMPONENT_SPACE_CHECK},
            "annotations": {sn.ANNOTATION_TEMPLATE_DIGEST: digest},
            "ownerReferences": [owner_reference(obs)],
        },
        "spec": job_spec.to_wire(),
    }


def space_check_outcome(spec: DistillationSearchSpec, name: str,
                        check: Mapping) -> tuple[SpaceCheck, tuple[str, str] | None]:
    """The check's line in the status and, when it failed, why the search fails."""
    status = check.get("status") or {}
    phase = status.get("phase")
    message = status.get("message") if isinstance(status.get("message"), str) else None
    if phase == "Succeeded":
        return SpaceCheck(job=name, phase="Passed", message=message), None
    if phase != "Failed":
        return SpaceCheck(job=name, phase="Running", message="a dry run of the space's deepest student"), None
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == SUCCEEDED), {})
    reason = cond.get("reason") or "Failed"
    message = message or reason
    deepest = spec.space.keep_layers.max
    if "keepLayers" in message:
        failure = ("InvalidSpace", f"space.keepLayers.max {deepest}: the teacher cannot give the space's deepest "
                                   f"student (dry run {name}: {message})")
    else:
        failure = ("SpaceCheckFailed", f"the dry run {name} that checks the space (keepLayers {deepest}) "
                                       f"failed ({reason}): {message}")
    return SpaceCheck(job=name, phase="Failed", message=message[:TRIAL_MESSAGE_CHARS]), failure


def template_digest_of(spec: DistillationSearchSpec) -> str:
    return sn.template_digest(spec.template.to_wire(), spec.space.to_wire())


def frontier_group_of(spec: DistillationSearchSpec) -> str:
    """The frontier group the trials' StudentModels join: the template's teacher and task, the
    search's hardware."""
    teacher = spec.template.teacher
    return registry.group_of(teacher.uri, teacher.task.value, spec.effective_targets().hardware.value)


def seed_name(spec: DistillationSearchSpec, params: TrialParams, seeds: list[tuple[str, TrialParams]]) -> str | None:
    """The StudentModel whose recipe the sampler's seeded point came from."""
    key = point_key(params)
    return next((name for name, seed in seeds if point_key(complete_point(spec, seed)) == key), None)


# ----------------------------------------------------------------------------- time


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the decision


@dataclass
class _Outcome:
    """Where the search stands after this look."""

    phase: str
    succeeded: tuple[bool | None, str, str]  # the Succeeded condition: status, reason, message
    stalled: tuple[bool, str, str]


def finished(obs: SearchObserved) -> bool:
    """Final for this generation with no trial left running: nothing more to do or to follow."""
    s = obs.status
    return (s.get("phase") in FINAL and s.get("observedGeneration") == obs.generation
            and not s.get("trialsRunning"))


def decide_search(obs: SearchObserved, jobs: list[Mapping], students: list[Mapping] | None,
                  now: datetime, problem: tuple[str, str] | None = None,
                  check: Mapping | None = None) -> list[SearchAction]:
    """One look at a search.

    `jobs` are its trials as stored (a fresh LIST), `students` the StudentModels of its frontier
    group (None: not read; the decision asks for them with ReadRegistry when it needs them),
    `now` the time the deadline is measured against, `problem` (reason, message) one met while
    executing the previous decision (a trial the API server refused) that fails the search,
    `check` the space's check job as stored ({} when there is none; None: not read, the decision
    asks for it with ReadSpaceCheck before the first trial when the space needs the teacher)."""
    if finished(obs):
        return []
    started_at = parse_time(obs.status.get("startTime")) or now
    try:
        spec = DistillationSearchSpec.model_validate(obs.spec)
    except ValidationError as err:
        return _failed_without_spec(obs, "InvalidSpec", f"invalid DistillationSearch: "
                                    f"{describe_validation_error(err)}", started_at, now)
    if len(obs.name) > sn.MAX_SEARCH_NAME:
        return _failed_without_spec(obs, "InvalidSpec", f"metadata.name: at most {sn.MAX_SEARCH_NAME} characters "
                                    "(every trial carries it as a label value)", started_at, now)

    trials = observed_trials(jobs)
    rows = [trial_row(t) for t in trials]
    running = [t for t in trials if not t.final]
    next_index = max([t.index + 1 for t in trials] + [_count(obs.status.get("trialsStarted"))])
    creates: list[CreateTrial] = []
    digest = template_digest_of(spec)
    failure = problem or _invalid_trial(trials, digest) or _invalid_space(spec)
    ending = None
    space_check = _recorded_space_check(obs)
    checking = None
    if failure is None:
        ending = _ending(spec, next_index, started_at, now)
        slots = min(spec.budget.parallel_trials - len(running), spec.budget.max_trials - next_index)
        if ending is None and slots > 0 and needs_space_check(spec, trials, digest):
            name = sn.space_check_name(obs.name, digest)
            if check is None:
                return [ReadSpaceCheck(name)]
            if check and ((check.get("metadata") or {}).get("labels") or {}).get(sn.LABEL_SPACE_CHECK) != obs.name:
                failure = name_taken(obs, name, sn.LABEL_SPACE_CHECK)  # someone else's job holds the name
            elif not check:
                try:
                    creates.append(CreateSpaceCheck(space_check_manifest(obs, spec, digest)))
                    check = {"status": {}}
                except ValueError as err:
                    failure = ("InvalidSpace", f"space.keepLayers.max: the space's deepest student is not a "
                                               f"valid job: {err}")
            if failure is None:
                space_check, failure = space_check_outcome(spec, name, check)
                if space_check.phase != "Passed":
                    slots, checking = 0, f"checking the space against the teacher first (dry run {name})"
        if failure is None and ending is None and slots > 0:
            if spec.learn_from_registry and students is None:
                return [ReadRegistry(frontier_group_of(spec))]
            planned = _plan(obs, spec, trials, rows, registry.live(students or []), next_index, slots)
            if isinstance(planned, str):
                failure = ("InvalidSpace", planned)
            else:
                creates, exhausted = planned
                if exhausted and not creates:
                    ending = "every point of the space has been tried"
    for create in creates:
        if isinstance(create, CreateSpaceCheck):
            continue
        meta = create.manifest["metadata"]
        trials.append(ObservedTrial(
            name=meta["name"], index=int(meta["labels"][sn.LABEL_TRIAL_INDEX]),
            params=sn.params_from_annotation(meta["annotations"][sn.ANNOTATION_PARAMS]),
            seeded=meta["annotations"][sn.ANNOTATION_SEEDED] == "true",
            seeded_from=meta["annotations"].get(sn.ANNOTATION_SEEDED_FROM), status={}))
        rows.append(trial_row(trials[-1]))
    status = _status(obs, spec, trials, rows, failure, ending, started_at, now, space_check, checking)
    actions: list[SearchAction] = list(creates)
    patch = status_patch(obs.status, status.to_wire())
    if patch:
        actions.append(PatchSearchStatus(patch))
    newly_final = status.phase in FINAL and (obs.status.get("phase") not in FINAL
                                             or obs.status.get("observedGeneration") != obs.generation)
    if newly_final:
        reason = status.conditions[0].reason
        actions.append(Event(reason, (status.message or "")[:1000], warning=failure is not None))
    return actions


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def name_taken(obs: SearchObserved, name: str, label: str = sn.LABEL_SEARCH) -> tuple[str, str]:
    """The problem of a name the search needs (a trial's, the space check's) held by a
    DistillationJob that is not this search's."""
    return "TrialNameTaken", (f"DistillationJob {name!r} already exists in namespace {obs.namespace!r} and is not "
                              f"this search's (label {label}); rename the search or that job")


def trial_refused(name: str, why: str) -> tuple[str, str]:
    """The problem of a trial the API server refused (its schema or CEL rules, which the
    operator's own checks did not catch): every trial of the space may be refused alike."""
    return "InvalidSpace", f"the API server refused trial {name}: {why}"


def _invalid_trial(trials: list[ObservedTrial], digest: str) -> tuple[str, str] | None:
    """The first trial refused as invalid under the current template and space (one made from an
    earlier template or space stays in the table, but the user has since changed what it tried)."""
    for t in trials:
        if t.template_digest is not None and t.template_digest != digest:
            continue
        reason = t.failure_reason()
        if reason in INVALID_TRIAL_REASONS:
            message = t.status.get("message") or reason
            return "TrialInvalid", f"trial {t.name} failed ({reason}): {message}"
    return None


def _invalid_space(spec: DistillationSearchSpec) -> tuple[str, str] | None:
    # Without a built-in architecture the operator cannot know the teacher's depth: the space's
    # check (a dry run, space_check_manifest) finds a keepLayers beyond it before any trial.
    problems = check_space(spec, known_depth(spec))
    return ("InvalidSpace", "; ".join(problems)) if problems else None


def _recorded_space_check(obs: SearchObserved) -> SpaceCheck | None:
    """The check the status already shows (kept once trials run, when it is no longer looked at)."""
    try:
        return SpaceCheck.model_validate(obs.status["spaceCheck"]) if obs.status.get("spaceCheck") else None
    except ValidationError:
        return None


def _ending(spec: DistillationSearchSpec, started: int, started_at: datetime, now: datetime) -> str | None:
    """Why no more trials start (None: more may start)."""
    if spec.stop:
        return "stopped (spec.stop)"
    deadline = spec.budget.active_deadline_seconds
    if deadline is not None and now >= started_at + timedelta(seconds=deadline):
        return f"budget.activeDeadlineSeconds ({deadline} s) passed"
    if started >= spec.budget.max_trials:
        return f"budget.maxTrials ({spec.budget.max_trials}) spent"
    return None


def _plan(obs: SearchObserved, spec: DistillationSearchSpec, trials: list[ObservedTrial], rows: list[SearchTrial],
          students: list[Mapping], next_index: int, slots: int) -> tuple[list[CreateTrial], bool] | str:
    """Up to `slots` new trials ((creates, space exhausted)), or the message of a point that
    cannot become a valid trial."""
    seeds = seeds_from_students([dict(s) for s in students], spec.space) if spec.learn_from_registry else []
    records = records_of(trials, rows, spec.objectives)
    creates: list[CreateTrial] = []
    for offset in range(slots):
        chosen = next_params(spec, records, [p for _, p in seeds])
        if chosen is None:
            return creates, True
        params, seeded = chosen
        source = seed_name(spec, params, seeds) if seeded else None
        try:
            manifest = trial_manifest(obs, spec, next_index + offset, params, source)
        except ValueError as err:
            return f"space: the point {sn.params_annotation(params)} gives an invalid trial: {err}"
        creates.append(CreateTrial(manifest))
        records.append(TrialRecord(params=params, values=None, finished=False))
    return creates, False


def _status(obs: SearchObserved, spec: DistillationSearchSpec, trials: list[ObservedTrial], rows: list[SearchTrial],
            failure: tuple[str, str] | None, ending: str | None, started_at: datetime,
            now: datetime, space_check: SpaceCheck | None = None,
            checking: str | None = None) -> DistillationSearchStatus:
    frontier = frontier_of(rows, spec.objectives)
    on_frontier = set(frontier)
    rows = [r.model_copy(update={"on_frontier": r.name in on_frontier}) for r in rows]
    best = best_trial(rows, spec.effective_optimize_for())
    running = sum(1 for t in trials if not t.final)
    succeeded = sum(1 for t in trials if t.phase == "Succeeded")
    failed = sum(1 for t in trials if t.phase == "Failed")
    started = max([t.index + 1 for t in trials] + [_count(obs.status.get("trialsStarted"))])
    outcome = _outcome(spec, best, failure, ending, running, succeeded + failed, checking)
    total = max(1, min(spec.budget.max_trials, grid_size(spec.space) or spec.budget.max_trials))
    done = outcome.phase in FINAL and running == 0
    percent = 100.0 if done else round(min(100.0, 100.0 * (succeeded + failed) / total), 2)
    summary = checking or f"{succeeded + failed} of {total} trials finished, {running} running"
    if failed:
        summary += f", {failed} failed"
    if best is not None:
        summary += f"; best {best.name}" if done else f"; best so far {best.name}"
    seeded_from: list[str] = []
    for t in trials:
        if t.seeded and t.seeded_from and t.seeded_from not in seeded_from:
            seeded_from.append(t.seeded_from)
    previous = obs.conditions
    gen = obs.generation
    return DistillationSearchStatus(
        observed_generation=gen,
        phase=outcome.phase,
        conditions=[st.condition(SUCCEEDED, *outcome.succeeded, gen, previous, format_time(now)),
                    st.condition(STALLED, *outcome.stalled, gen, previous, format_time(now))],
        progress=SearchProgress(percent=percent, message=summary),
        algorithm=resolve_algorithm(spec).value,
        trials_started=started,
        trials_running=running,
        trials_succeeded=succeeded,
        trials_failed=failed,
        trials=rows,
        frontier=frontier,
        best_trial=best.name if best else None,
        student_model=best.student_model if best else None,
        seeded_from=seeded_from,
        space_check=space_check,
        start_time=format_time(started_at),
        completion_time=(obs.status.get("completionTime") or format_time(now)) if done else None,
        message=outcome.succeeded[2][:2048],
    )


def _outcome(spec: DistillationSearchSpec, best: SearchTrial | None, failure: tuple[str, str] | None,
             ending: str | None, running: int, finished_count: int, checking: str | None = None) -> _Outcome:
    if failure is not None:
        reason, message = failure
        return _Outcome("Failed", (False, reason, message), (True, reason, message))
    if ending is None or running:
        phase = "Running" if running or finished_count else "Pending"
        why = f"no more trials start: {ending}; waiting for {running} running" if ending else (checking or "searching")
        return _Outcome(phase, (None, phase, why), (False, "Progressing", ""))
    if best is not None:
        model = f" (StudentModel {best.student_model})" if best.student_model else ""
        message = (f"{ending}; best trial {best.name}{model} by {spec.effective_optimize_for().value}: "
                   f"accuracy {best.accuracy}, latency {best.latency_ms} ms, variant {best.variant}")
        return _Outcome("Succeeded", (True, "Completed", message), (False, "Completed", ""))
    message = f"{ending}; none of the {finished_count} finished trials meets every target"
    return _Outcome("Failed", (False, "NoStudentMeetsTargets", message), (False, "NoStudentMeetsTargets", ""))


def _failed_without_spec(obs: SearchObserved, reason: str, message: str, started_at: datetime,
                         now: datetime) -> list[SearchAction]:
    """A search whose spec cannot be read: Failed, nothing started."""
    gen = obs.generation
    status = DistillationSearchStatus(
        observed_generation=gen, phase="Failed", message=message[:2048],
        conditions=[st.condition(SUCCEEDED, False, reason, message, gen, obs.conditions, format_time(now)),
                    st.condition(STALLED, True, reason, message, gen, obs.conditions, format_time(now))],
        start_time=format_time(started_at), completion_time=obs.status.get("completionTime") or format_time(now))
    actions: list[SearchAction] = []
    patch = status_patch(obs.status, status.to_wire())
    if patch:
        actions.append(PatchSearchStatus(patch))
    if obs.status.get("phase") != "Failed" or obs.status.get("observedGeneration") != gen:
        actions.append(Event(reason, message[:1000], warning=True))
    return actions


def finished_after(obs: SearchObserved, actions: list[SearchAction]) -> bool:
    """Whether the search is finished once these actions are executed (so a look at a stale copy
    of it, which the watch has not updated yet, can be skipped)."""
    status = dict(obs.status)
    for action in actions:
        if isinstance(action, PatchSearchStatus):
            status.update(action.patch)
    return finished(SearchObserved(obs.name, obs.namespace, obs.uid, obs.generation, obs.spec, status))


# Every status field the search writes (camelCase): one that the new status leaves out is cleared.
STATUS_FIELDS = tuple(f.alias or name for name, f in DistillationSearchStatus.model_fields.items())


def status_patch(observed: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns the observed status into the wanted one: only the fields that
    differ (an unchanged status costs no write), None for fields to clear."""
    patch = {k: v for k, v in wanted.items() if observed.get(k) != v}
    for key in STATUS_FIELDS:
        if key not in wanted and observed.get(key) is not None:
            patch[key] = None
    return patch


__all__ = ["CreateSpaceCheck", "CreateTrial", "ReadSpaceCheck", "INVALID_TRIAL_REASONS", "ObservedTrial", "PatchSearchStatus", "ReadRegistry",
           "SearchAction", "SearchObserved", "decide_search", "finished", "finished_after", "frontier_group_of",
           "name_taken", "observed_trials", "trial_refused",
           "status_patch", "trial_manifest", "trial_row"]
