"""`distillery-trainer`: the trainer pod's entry point (also what `distillery run` calls).

The job spec comes from a file (`--spec`) or the DISTILLERY_JOB environment variable (JSON or
YAML). The exit code says accepted (0; also a dry run whose checks pass), rejected (3), invalid input (2: permanent, never
retried), error (1: store or network trouble, SIGTERM, anything else; retried) or interrupted by
Ctrl-C (130, the shell's 128 + SIGINT). Every failure is one `error:` line on stderr, and a
compact JSON result goes to the termination-message file when there is one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from distillery.api import SpecError, load_job_file
from distillery.api.load import load_job_text
from distillery.api.result import (
    EXIT_ERROR,
    EXIT_INVALID,
    EXIT_REJECTED,
    TrainerResult,
    error_message,
)
from distillery.store import StoreError
from distillery_trainer.errors import InputError

TERMINATION_LOG = "/dev/termination-log"


def _write_termination(text: str, path: str | None) -> None:
    target = path or (TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None)
    if target:
        with contextlib.suppress(OSError):
            Path(target).write_text(text)


def one_line(text: str) -> str:
    """Messages go to a terminal, a termination message and job conditions: always one line."""
    return " ".join(str(text).split())


class Interrupted(BaseException):
    """Raised by the SIGTERM/SIGINT handler. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it, while every `finally` (the temp folder's removal,
    the output lock's release) still runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# SIGTERM (pod deleted, evicted, deadline) is retried like any error; SIGINT (Ctrl-C) is the
# shell's convention, 128 + 2, so scripts can tell that the user stopped the run.
EXIT_SIGNAL = {signal.SIGTERM: EXIT_ERROR, signal.SIGINT: 130}


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT end the run cleanly: the handler raises Interrupted once (a second
    signal during the cleanup is ignored, so the cleanup finishes), the run's `finally` blocks
    remove its temp files, and run_job reports one line. As PID 1 of its container the trainer
    would otherwise ignore SIGTERM (the kernel drops signals PID 1 has no handler for), so
    `kubectl delete pod` would wait out the grace period while it trains on."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    fired = []

    def stop(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in EXIT_SIGNAL}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(code: int, reason: str, message: str, termination_path: str | None) -> tuple[int, None]:
    message = one_line(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    _write_termination(error_message(reason, message), termination_path)
    return code, None


def _is_network_error(err: BaseException) -> bool:
    """botocore/urllib3 connection trouble that escaped the store's own error mapping."""
    module = type(err).__module__ or ""
    return module.startswith(("botocore", "urllib3", "boto3", "s3transfer")) or isinstance(
        err, (ConnectionError, TimeoutError))


def run_job(job, *, restart: bool = False, allow_nonempty_output: bool = False,
            termination_path: str | None = None, show_bar: bool | None = None) -> tuple[int, TrainerResult | None]:
    """Runs one job and maps every outcome to an exit code; errors are one clear line.

    0 accepted, 3 rejected, 2 invalid input (permanent: retrying cannot help), 1 anything else
    (retried: store and network trouble, SIGTERM), 130 SIGINT.
    """
    from distillery_trainer.pipeline import run
    from distillery_trainer.progress import Progress

    progress = Progress(show_bar=show_bar)
    with stop_on_signals():  # also while reporting, so a second Ctrl-C cannot cut the report short
        try:
            if job.spec.dry_run:
                return _dry_run(job, progress, termination_path), None
            result = run(job, restart=restart, progress=progress, allow_nonempty_output=allow_nonempty_output)
        except Interrupted as stop:
            progress.interrupted()
            name = signal.Signals(stop.signum).name
            return _fail(EXIT_SIGNAL[stop.signum], "Terminated" if stop.signum == signal.SIGTERM else "Interrupted",
                         f"interrupted ({name}); the temporary files are removed and a new run resumes from "
                         "the last checkpoint", termination_path)
        except (InputError, SpecError) as err:
            return _fail(EXIT_INVALID, "InvalidInput", str(err), termination_path)
        except StoreError as err:
            return _fail(EXIT_ERROR, "StoreError", f"store: {err}", termination_path)
        except MemoryError:
            return _fail(EXIT_ERROR, "OutOfMemory", "out of memory", termination_path)
        except Exception as err:  # noqa: BLE001 - the last line of defence reports and exits
            if _is_network_error(err):
                return _fail(EXIT_ERROR, "StoreError", f"store: network error ({type(err).__name__})",
                             termination_path)
            traceback.print_exc()  # an unexpected failure is a bug: keep what is needed to fix it
            return _fail(EXIT_ERROR, type(err).__name__, f"{type(err).__name__}: {err}", termination_path)
    if result is None:  # a rank other than 0 of a distributed run: it trained its share; rank 0 reports
        return 0, None
    _write_termination(result.termination_message(), termination_path)
    return result.exit_code, result


def _dry_run(job, progress, termination_path: str | None) -> int:
    """spec.dryRun: the checks only (dry_run.py); exit 0 when they pass, the summary on stdout."""
    from distillery_trainer import dry_run

    text = dry_run.check_only(job, progress)
    print(f"dry run: {text}", flush=True)
    _write_termination(dry_run.termination_message(text), termination_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    from distillery_trainer import launch

    if launch.wanted(os.environ):  # several processes asked for: this process starts torchrun
        return launch.launch(sys.argv[1:] if argv is None else argv)
    code = run_from_args(argv)
    launch.record_exit(code)
    return code


def run_from_args(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="distillery-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="DistillationJob YAML file (default: $DISTILLERY_JOB)")
    parser.add_argument("--restart", action="store_true", help="discard checkpoints and start over")
    parser.add_argument("--allow-nonempty-output", action="store_true",
                        default=os.environ.get("DISTILLERY_ALLOW_NONEMPTY_OUTPUT", "") not in ("", "0", "false"),
                        help="write into an output folder that holds files Distillery did not write")
    parser.add_argument("--termination-log", default=os.environ.get("DISTILLERY_TERMINATION_LOG"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.spec:
            job = load_job_file(args.spec)
        elif os.environ.get("DISTILLERY_JOB"):
            job = load_job_text(os.environ["DISTILLERY_JOB"], "DISTILLERY_JOB")
        else:
            parser.error("give --spec FILE or set DISTILLERY_JOB")
    except SpecError as err:
        return _fail(EXIT_INVALID, "InvalidSpec", str(err), args.termination_log)[0]
    code, result = run_job(job, restart=args.restart, allow_nonempty_output=args.allow_nonempty_output,
                           termination_path=args.termination_log, show_bar=False)
    if result is not None:
        from distillery_trainer.report import table

        print(table(result))
        if code == EXIT_REJECTED and os.environ.get("DISTILLERY_REJECTED_EXIT_CODE"):
            # In the cluster a rejected student is a finished run; the verdict is in the result.
            return int(os.environ["DISTILLERY_REJECTED_EXIT_CODE"])
    return code


if __name__ == "__main__":
    sys.exit(main())
