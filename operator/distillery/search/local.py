"""`distillery search`: a DistillationSearch run on this machine, one trial after another.

Each trial is a DistillationJob run by the same function as `distillery run` (run_job), in
`<output>/trials/<trial>`, all sharing one teacher-output cache. The search is level-triggered like
the operator: `<output>/search.json` (the search's status) is rewritten before and after every trial,
and a rerun runs the trials it lists again (run_job reuses a finished trial's result.json and resumes
an interrupted one from its checkpoint), then samples on from their results. Nothing is lost when
the command is stopped, and nothing is trained twice.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from distillery.api.job import DistillationJob, DistillationJobSpec, ObjectMeta, TeacherFormat
from distillery.api.load import describe_validation_error
from distillery.api.result import EXIT_ERROR, EXIT_INVALID, TrainerResult
from distillery.api.search import (
    DistillationSearch,
    DistillationSearchStatus,
    Objective,
    SearchProgress,
    SearchTrial,
    TrialParams,
)
from distillery.search.sampler import next_params
from distillery.search.space import (
    check_space,
    complete_point,
    point_key,
    resolve_algorithm,
    trial_spec,
    trial_targets,
)
from distillery.search.trials import (
    best_trial,
    frontier_of,
    record_of,
    seeds_from_students,
    trial_name,
)

EXIT_NO_STUDENT = 3  # every trial ran, none met every target (as `distillery run`'s rejected)
EXIT_INTERRUPTED = 130
STATUS_FILE, PLOT_FILE = "search.json", "frontier.png"
SUCCEEDED, FAILED, RUNNING = "Succeeded", "Failed", "Running"


class SearchInputError(ValueError):
    """The search cannot start: the message names the field (exit 2)."""


@dataclass
class SearchOutcome:
    code: int
    status: DistillationSearchStatus
    results: dict[str, TrainerResult] = field(default_factory=dict)  # trial name -> its result
    plot: str | None = None  # where frontier.png was written, None when nothing could be drawn


# ----------------------------------------------------------------------------- inputs


def resolve_search_paths(search: DistillationSearch, base: Path) -> DistillationSearch:
    """The search with its template's relative local paths made absolute (as `distillery run`)."""
    from distillery.local_paths import resolve_local_uris

    job = DistillationJob(metadata=ObjectMeta(name=search.metadata.name), spec=search.spec.template)
    template = resolve_local_uris(job, base).spec
    return search.model_copy(update={"spec": search.spec.model_copy(update={"template": template})})


def _local_path(uri: str) -> Path | None:
    if "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")).expanduser()


def source_depth(template: DistillationJobSpec) -> int | None:
    """Layers of the model the student is cut from (the teacher, or student.base for an ONNX
    teacher), read as the trainer's preflight reads it; None when it is not on this machine."""
    from distillery_trainer.errors import InputError
    from distillery_trainer.preflight import model_facts

    student = template.student
    if student.architecture is not None and student.base is None:
        return student.architecture.num_blocks
    if template.teacher.format == TeacherFormat.ONNX:
        if student.base is None or student.base.uri is None:  # a StudentModel: in a cluster only
            return None
        uri, fmt, where = student.base.uri, student.base.format, "template.student.base.uri"
    else:
        uri, fmt, where = template.teacher.uri, template.teacher.format, "template.teacher.uri"
    path = _local_path(uri)
    if path is None:
        return None
    if not path.exists():
        raise SearchInputError(f"{where}: {path} does not exist")
    try:
        return model_facts(path, fmt, where).layers
    except InputError as err:
        raise SearchInputError(str(err)) from None


def learned_seeds(directory: Path, search: DistillationSearch) -> list[tuple[str, TrialParams]]:
    """Seeds from a previous local search's output folder: its frontier trials' settings, projected
    onto this search's space (best paretoScore first)."""
    path = directory / STATUS_FILE
    try:
        previous = DistillationSearchStatus.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SearchInputError(f"--learn-from: {path} not found (give a previous search's output folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SearchInputError(f"--learn-from: {path} cannot be read ({err})") from None
    except ValidationError as err:
        raise SearchInputError(f"--learn-from: {path} is not a search status "
                               f"({describe_validation_error(err)})") from None
    frontier = set(previous.frontier)
    # The same shape as registered StudentModels, so the registry's ranking and projection apply.
    students = [{"metadata": {"name": t.name}, "spec": {"recipe": t.params.to_wire(), "paretoScore": t.pareto_score},
                 "status": {"onFrontier": True}} for t in previous.trials if t.name in frontier]
    return seeds_from_students(students, search.spec.space)


# ----------------------------------------------------------------------------- pure pieces


def trial_row(name: str, index: int, params: TrialParams, seeded: bool, code: int,
              result: TrainerResult | None, message: str | None) -> SearchTrial:
    """A row of the trials table from what run_job returned."""
    if result is None:
        return SearchTrial(name=name, index=index, params=params, seeded=seeded, phase=FAILED,
                           message=message or f"exit code {code}")
    student = result.student
    return SearchTrial(
        name=name, index=index, params=params, seeded=seeded, phase=SUCCEEDED,
        accuracy=student.accuracy, latency_ms=student.latency_p50_ms, size_bytes=student.size_bytes,
        pareto_score=result.pareto_score, variant=getattr(result, "variant", None) or "fp32",
        accepted=result.decision.accepted,
        message=None if result.decision.accepted else "; ".join(result.decision.reasons) or None)


def summarize(search: DistillationSearch, rows: list[SearchTrial], *, algorithm: str, seeded_from: list[str],
              start_time: str, done: bool) -> DistillationSearchStatus:
    """The search's status from its trials: counts, frontier, best trial, progress."""
    spec = search.spec
    frontier = frontier_of(rows, spec.objectives)
    best = best_trial(rows, spec.effective_optimize_for())
    on = set(frontier)
    table = [r.model_copy(update={"on_frontier": r.name in on}) for r in rows]
    finished = [r for r in rows if r.phase in (SUCCEEDED, FAILED)]
    percent = 100.0 if done else round(100.0 * len(finished) / spec.budget.max_trials, 1)
    if not done:
        phase, message = RUNNING, f"{len(finished)} of at most {spec.budget.max_trials} trials done"
    elif best is not None:
        phase, message = SUCCEEDED, f"best trial {best.name}: a student that meets every target"
    else:
        phase, message = FAILED, _no_student_message(rows)
    return DistillationSearchStatus(
        phase=phase, progress=SearchProgress(percent=percent, message=message), algorithm=algorithm,
        trials_started=len(rows), trials_running=sum(r.phase == RUNNING for r in rows),
        trials_succeeded=sum(r.phase == SUCCEEDED for r in rows), trials_failed=sum(r.phase == FAILED for r in rows),
        trials=table, frontier=frontier, best_trial=best.name if best else None, seeded_from=seeded_from,
        start_time=start_time, completion_time=_now() if done else None, message=message)


def _no_student_message(rows: list[SearchTrial]) -> str:
    measured = [r for r in rows if r.phase == SUCCEEDED]
    if not measured:
        return "no trial produced a student" + (f" (last error: {rows[-1].message})" if rows else "")
    closest = max(measured, key=lambda r: r.pareto_score or 0.0)
    return f"no trial met every target; e.g. {closest.name}: {closest.message}"


def exit_code(status: DistillationSearchStatus) -> int:
    """0 a trial met every target; 3 none did; 1 no trial could be measured (errors)."""
    if status.best_trial is not None:
        return 0
    return EXIT_NO_STUDENT if status.trials_succeeded else EXIT_ERROR


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_since(iso: str) -> float:
    return (datetime.now(UTC) - datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)).total_seconds()


def describe_params(params: TrialParams) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.to_wire().items()) or "(template)"


# ----------------------------------------------------------------------------- running


class _LineForwarder(io.TextIOBase):
    """A stream that hands each complete line to `emit` (a trial's log goes above the bar)."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.buffer_text = emit, ""

    def write(self, text: str) -> int:
        self.buffer_text += text
        *lines, self.buffer_text = self.buffer_text.split("\n")
        for line in lines:
            if line.strip():
                self.emit(line)
        return len(text)

    def flush(self) -> None:
        pass


class LocalSearch:
    """One invocation of `distillery search`: replays the trials already listed, then samples more."""

    def __init__(self, search: DistillationSearch, *, restart: bool = False, show_bar: bool | None = None,
                 learn_from: Path | None = None, stream=None):
        self.search, self.spec = search, search.spec
        self.restart, self.learn_from = restart, learn_from
        self.stream = stream or sys.stderr
        self.show_bar = self.stream.isatty() if show_bar is None else show_bar
        self.output = self.spec.template.output
        self.cache_uri = self.output.cache_uri or f"{self.output.uri.rstrip('/')}/cache"
        self.results: dict[str, TrainerResult] = {}
        self.bar = None

    # ---- the store: search.json and frontier.png beside the trials

    def _store(self):
        from distillery.store import open_store

        return open_store(self.output.uri, endpoint=self.output.endpoint, region=self.output.region)

    def _previous(self, store) -> DistillationSearchStatus | None:
        """The status an earlier run of this search left (None: a first run, or --restart)."""
        if self.restart or not store.exists(STATUS_FILE):
            return None
        where = store.uri_for(STATUS_FILE)
        try:
            previous = DistillationSearchStatus.model_validate(json.loads(store.read_text(STATUS_FILE)))
        except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as err:
            raise SearchInputError(f"{where} is not a search status ({one_line(err)}); rerun with --restart "
                                   "to start the search over") from None
        name = self.search.metadata.name
        strangers = [t.name for t in previous.trials if t.name != trial_name(name, t.index)]
        if strangers:
            raise SearchInputError(f"template.output.uri: {where} belongs to another search (trial "
                                   f"{strangers[0]}); give search {name!r} its own output.uri, or rerun "
                                   "with --restart to replace it")
        return previous

    def _write(self, store, status: DistillationSearchStatus) -> None:
        store.write_text(STATUS_FILE, json.dumps(status.to_wire(), indent=2) + "\n")

    # ---- one trial

    def _log(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _run_trial(self, index: int, params: TrialParams, seeded: bool) -> tuple[int, SearchTrial]:
        from distillery_trainer.entrypoint import run_job

        name = trial_name(self.search.metadata.name, index)
        try:
            spec = trial_spec(self.spec.template, params, output_uri=f"{self.output.uri.rstrip('/')}/trials/{name}",
                              cache_uri=self.cache_uri, targets=trial_targets(self.spec))
        except ValueError as err:
            return EXIT_INVALID, trial_row(name, index, params, seeded, EXIT_INVALID, None, str(err))
        job = DistillationJob(metadata=ObjectMeta(name=name), spec=spec)
        started = time.monotonic()
        errors: list[str] = []

        def forward(line: str) -> None:
            if line.startswith("error: "):
                errors.append(line.removeprefix("error: "))
            self._log(f"  {name} | {line}")

        with contextlib.redirect_stderr(_LineForwarder(forward)):
            code, result = run_job(job, restart=self.restart, show_bar=False)
        if result is not None:
            self.results[name] = result
        row = trial_row(name, index, params, seeded, code, result, errors[-1] if errors else None)
        self._log(self._trial_line(row, time.monotonic() - started))
        return code, row

    @staticmethod
    def _trial_line(row: SearchTrial, seconds: float) -> str:
        where = f"[search] {row.name} {describe_params(row.params)}{' (seeded)' if row.seeded else ''}:"
        if row.phase != SUCCEEDED:
            return f"{where} failed: {row.message} ({seconds:.1f} s)"
        verdict = "accepted" if row.accepted else "rejected"
        return (f"{where} {row.variant} accuracy {row.accuracy:.4f}, p50 {row.latency_ms:.2f} ms, "
                f"{(row.size_bytes or 0) / 1e6:.2f} MB, {verdict} ({seconds:.1f} s)")

    # ---- the search

    def run(self) -> SearchOutcome:
        """Check, replay, sample until the budget ends, then write search.json and frontier.png."""
        spec = self.spec
        problems = check_space(spec, source_depth(spec.template))
        if problems:
            raise SearchInputError("; ".join(problems))
        seeds = learned_seeds(self.learn_from, self.search) if self.learn_from else []
        store = self._store()
        previous = self._previous(store)
        start_time = previous.start_time if previous and previous.start_time else _now()
        algorithm = resolve_algorithm(spec).value
        seed_names = {point_key(complete_point(spec, p)): n for n, p in seeds}
        rows: list[SearchTrial] = []
        replay = sorted(previous.trials, key=lambda t: t.index) if previous else []
        code = 0

        def status(done: bool) -> DistillationSearchStatus:
            used = [seed_names[k] for r in rows if r.seeded and (k := point_key(complete_point(spec, r.params)))
                    in seed_names]
            seeded_from = sorted(set(used) | set(previous.seeded_from if previous else []))
            return summarize(self.search, rows, algorithm=algorithm, seeded_from=seeded_from,
                             start_time=start_time, done=done)

        self._open_bar()
        try:
            while len(rows) < spec.budget.max_trials:
                index = len(rows)
                if index < len(replay):
                    params, seeded = replay[index].params, replay[index].seeded
                else:
                    if spec.stop or self._past_deadline(start_time):
                        break
                    records = [record_of(r, spec.objectives) for r in rows]
                    chosen = next_params(spec, records, [p for _, p in seeds])
                    if chosen is None:
                        break
                    params, seeded = chosen
                rows.append(SearchTrial(name=trial_name(self.search.metadata.name, index), index=index,
                                        params=params, seeded=seeded, phase=RUNNING))
                self._write(store, status(done=False))
                code, rows[index] = self._run_trial(index, params, seeded)
                self._tick(rows)
                if code == EXIT_INTERRUPTED or (code == EXIT_INVALID and index == 0):
                    break  # Ctrl-C, or bad input every trial shares: stop here
        finally:
            self._close_bar()
        if code == EXIT_INTERRUPTED:
            rows[-1] = rows[-1].model_copy(update={"phase": RUNNING, "message": "interrupted"})
            self._write(store, status(done=False))
            return SearchOutcome(EXIT_INTERRUPTED, status(done=False), self.results)
        final = status(done=True)
        self._write(store, final)
        if code == EXIT_INVALID and len(rows) == 1:
            return SearchOutcome(EXIT_INVALID, final, self.results)
        return SearchOutcome(exit_code(final), final, self.results, self._plot(store, final))

    def _past_deadline(self, start_time: str) -> bool:
        deadline = self.spec.budget.active_deadline_seconds
        return deadline is not None and _seconds_since(start_time) >= deadline

    def _plot(self, store, status: DistillationSearchStatus) -> str | None:
        """frontier.png: every measured trial's chosen variant and the teacher (plot.py draws it)."""
        from distillery import plot

        # Sizes only when size is an objective, so the plot's frontier is the table's.
        sized = Objective.SIZE in self.spec.objectives
        points = [(f"{t.name}{'' if t.variant == 'fp32' else ' ' + t.variant}", t.accuracy, t.latency_ms,
                   t.size_bytes if sized else None, False) for t in status.trials if t.phase == SUCCEEDED]
        teacher = next(iter(self.results.values())).teacher if self.results else None
        if teacher is not None and teacher.accuracy is not None and teacher.latency_p50_ms is not None:
            points.insert(0, ("teacher", teacher.accuracy, teacher.latency_p50_ms,
                              teacher.size_bytes if sized else None, True))
        if not any(not p[4] for p in points):
            return None
        title = f"search {self.search.metadata.name}: {len(status.trials)} trials ({status.algorithm})"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / PLOT_FILE
                plot.frontier_plot(points, local, title)
                store.upload_file(local, PLOT_FILE)
        except ImportError:
            self._log("[search] matplotlib is not installed: no frontier.png (pip install 'distillery[plot]')")
            return None
        return store.uri_for(PLOT_FILE)

    # ---- the bar over trials

    def _open_bar(self) -> None:
        if self.show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.spec.budget.max_trials, desc=f"search {self.search.metadata.name}",
                            unit="trial", file=self.stream, dynamic_ncols=True)

    def _tick(self, rows: list[SearchTrial]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            best = best_trial(rows, self.spec.effective_optimize_for())
            self.bar.set_postfix({"best": best.name if best else "-"}, refresh=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_local_search(search: DistillationSearch, **options) -> SearchOutcome:
    """Run the search (see LocalSearch); bad input raises SearchInputError before any trial."""
    return LocalSearch(search, **options).run()


# ----------------------------------------------------------------------------- the table


def table(status: DistillationSearchStatus) -> str:
    """The trials table, frontier marked with *, the best trial with >, then one summary line."""
    lines = [f"{'':2}{'trial':<22} {'params':<44} {'variant':<7} {'accuracy':>8} {'p50 ms':>9} "
             f"{'size MB':>8}  verdict"]
    for t in status.trials:
        mark = (">" if t.name == status.best_trial else " ") + ("*" if t.on_frontier else " ")
        if t.phase == SUCCEEDED:
            measured = (f"{t.variant or '-':<7} {t.accuracy if t.accuracy is not None else float('nan'):>8.4f} "
                        f"{t.latency_ms if t.latency_ms is not None else float('nan'):>9.2f} "
                        f"{(t.size_bytes or 0) / 1e6:>8.2f}  {'accepted' if t.accepted else 'rejected'}")
        else:
            measured = f"{'-':<7} {'-':>8} {'-':>9} {'-':>8}  {(t.phase or '').lower()}: {t.message or ''}"
        lines.append(f"{mark}{t.name:<22} {describe_params(t.params):<44} {measured}")
    lines.append(f"* on the frontier ({', '.join(status.frontier) or 'none'}); "
                 f"> best: {status.best_trial or 'none'} ({status.algorithm}, {status.trials_started} trials"
                 f"{', seeded from ' + ', '.join(status.seeded_from) if status.seeded_from else ''})")
    lines.append(status.message or "")
    return "\n".join(lines)
