"""`distillery-trainer`: the trainer pod's entry point (also what `distillery run` calls).

The job spec comes from a file (`--spec`) or the DISTILLERY_JOB environment variable (JSON or
YAML). The exit code says accepted (0), rejected (3), invalid input (2) or error (1), and a
compact JSON result goes to the termination-message file when there is one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import yaml

from distillery.api import SpecError, load_job, load_job_file
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


def run_job(job, *, restart: bool = False, termination_path: str | None = None,
            show_bar: bool | None = None) -> tuple[int, TrainerResult | None]:
    """Runs one job and maps every outcome to an exit code; errors are one clear line."""
    from distillery_trainer.pipeline import run
    from distillery_trainer.progress import Progress

    try:
        result = run(job, restart=restart, progress=Progress(show_bar=show_bar))
    except (InputError, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        _write_termination(error_message("InvalidInput", str(err)), termination_path)
        return EXIT_INVALID, None
    except StoreError as err:
        print(f"error: store: {err}", file=sys.stderr)
        _write_termination(error_message("StoreError", str(err)), termination_path)
        return EXIT_ERROR, None
    except Exception as err:  # noqa: BLE001 - the last line of defence reports and exits
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        _write_termination(error_message(type(err).__name__, str(err)), termination_path)
        return EXIT_ERROR, None
    _write_termination(result.termination_message(), termination_path)
    return result.exit_code, result


def exit_on_sigterm(termination_path: str | None) -> None:
    """As PID 1 of its container the trainer would ignore SIGTERM (the kernel drops signals PID 1
    has no handler for), so `kubectl delete pod`, evictions and deadlines would wait out the whole
    grace period while it trains on. It stops at once instead; the next pod resumes from the last
    checkpoint, and result.json, written last, is never half there."""

    def stop(signum, frame):
        print("error: terminated (SIGTERM); a new run resumes from the last checkpoint", file=sys.stderr, flush=True)
        _write_termination(error_message("Terminated", "the trainer received SIGTERM"), termination_path)
        raise SystemExit(EXIT_ERROR)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillery-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="DistillationJob YAML file (default: $DISTILLERY_JOB)")
    parser.add_argument("--restart", action="store_true", help="discard checkpoints and start over")
    parser.add_argument("--termination-log", default=os.environ.get("DISTILLERY_TERMINATION_LOG"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    exit_on_sigterm(args.termination_log)
    try:
        if args.spec:
            job = load_job_file(args.spec)
        elif os.environ.get("DISTILLERY_JOB"):
            job = load_job(yaml.safe_load(os.environ["DISTILLERY_JOB"]))
        else:
            parser.error("give --spec FILE or set DISTILLERY_JOB")
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        _write_termination(error_message("InvalidSpec", str(err)), args.termination_log)
        return EXIT_INVALID
    code, result = run_job(job, restart=args.restart, termination_path=args.termination_log, show_bar=False)
    if result is not None:
        from distillery_trainer.report import table

        print(table(result))
        if code == EXIT_REJECTED and os.environ.get("DISTILLERY_REJECTED_EXIT_CODE"):
            # In the cluster a rejected student is a finished run; the verdict is in the result.
            return int(os.environ["DISTILLERY_REJECTED_EXIT_CODE"])
    return code


if __name__ == "__main__":
    sys.exit(main())
