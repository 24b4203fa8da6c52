"""The `distillery` command: run a job locally, validate it, compare models, generate CRDs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillery.api import SpecError, load_job_file
from distillery.api.result import EXIT_ERROR, EXIT_INVALID


def cmd_run(args) -> int:
    try:
        job = load_job_file(args.job)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    from distillery.local_paths import resolve_local_uris

    job = resolve_local_uris(job, Path(args.job).resolve().parent)
    if args.dry_run:
        job.spec.dry_run = True
    try:
        from distillery_trainer.entrypoint import run_job
        from distillery_trainer.report import table
    except ImportError as err:
        print(f"error: the trainer is not installed ({err}); pip install 'distillery[trainer]'", file=sys.stderr)
        return EXIT_ERROR
    code, result = run_job(job, restart=args.restart, allow_nonempty_output=args.allow_nonempty_output,
                           show_bar=None if not args.no_progress else False)
    if result is not None:
        print(json.dumps(result.to_wire(), indent=2) if args.json else table(result))
    return code


def cmd_search(args) -> int:
    from distillery.api.load import load_search_file

    try:
        search = load_search_file(args.search)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    from distillery.search.local import (
        SearchInputError,
        resolve_search_paths,
        run_local_search,
        table,
    )
    from distillery.store import StoreError

    try:
        import distillery_trainer.entrypoint  # noqa: F401 - every trial runs in this process
    except ImportError as err:
        print(f"error: the trainer is not installed ({err}); pip install 'distillery[trainer]'", file=sys.stderr)
        return EXIT_ERROR
    search = resolve_search_paths(search, Path(args.search).resolve().parent)
    learn_from = Path(args.learn_from).expanduser().resolve() if args.learn_from else None
    try:
        outcome = run_local_search(search, restart=args.restart, learn_from=learn_from,
                                   show_bar=False if args.no_progress else None)
    except SearchInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except StoreError as err:  # search.json or frontier.png could not be read or written
        print(f"error: store: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(outcome.status.to_wire(), indent=2) if args.json else table(outcome.status))
    if outcome.plot and not args.json:
        print(f"wrote {outcome.plot}")
    return outcome.code


def cmd_validate(args) -> int:
    try:
        job = load_job_file(args.job)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.job}: valid DistillationJob {job.metadata.name!r}")
    return 0


def cmd_compare(args) -> int:
    from distillery.compare import compare, format_comparison

    try:
        result = compare(Path(args.a), Path(args.b))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


def cmd_crds(args) -> int:
    from distillery import crdgen

    argv = ["--out", args.out] + (["--check"] if args.check else [])
    return crdgen.main(argv)


def cmd_operator(args) -> int:
    try:
        from distillery.controller.main import run
    except ImportError as err:
        print(f"error: the operator is not installed ({err}); pip install 'distillery[operator]'", file=sys.stderr)
        return EXIT_ERROR
    import os

    from distillery.controller.settings import SettingsError

    namespaces = args.namespace or [n for n in os.environ.get("DISTILLERY_NAMESPACES", "").split(",") if n]
    try:
        return run(namespaces, args.liveness, args.verbose)
    except SettingsError as err:  # a malformed chart value: one line naming the variable, no traceback
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID


def cmd_frontier(args) -> int:
    from distillery import plot

    if args.cluster:
        try:
            items = plot.cluster_student_models(args.namespace)
        except ImportError as err:
            print(f"error: the kubernetes client is not installed ({err}); pip install 'distillery[operator]'",
                  file=sys.stderr)
            return EXIT_ERROR
        except Exception as err:  # noqa: BLE001 - config or API errors: one line, no traceback
            print(f"error: cannot list StudentModels: {err}", file=sys.stderr)
            return EXIT_ERROR
        points = plot.points_from_student_models(items)
        source = f"{len(items)} StudentModels" + (f" in {args.namespace}" if args.namespace else "")
    else:
        if not args.results:
            print("error: give one or more result.json files, or --cluster", file=sys.stderr)
            return EXIT_INVALID
        from pydantic import ValidationError

        from distillery.api.load import describe_validation_error
        from distillery.api.result import TrainerResult

        results = []
        for name in args.results:
            try:
                results.append(TrainerResult.model_validate(json.loads(Path(name).read_text())))
            except (OSError, json.JSONDecodeError) as err:
                print(f"error: {name}: {err}", file=sys.stderr)
                return EXIT_INVALID
            except (UnicodeDecodeError, RecursionError):
                print(f"error: {name}: not a UTF-8 JSON document", file=sys.stderr)
                return EXIT_INVALID
            except ValidationError as err:
                print(f"error: {name}: not a TrainerResult: {describe_validation_error(err)}", file=sys.stderr)
                return EXIT_INVALID
        points = plot.points_from_results(results)
        source = f"{len(results)} results"
    if not points:
        print(f"error: nothing to plot ({source} without accuracy and latency)", file=sys.stderr)
        return EXIT_INVALID
    try:
        data = plot.frontier_plot(points, args.out, args.title or f"Pareto frontier ({source})")
    except ImportError as err:
        print(f"error: matplotlib is not installed ({err}); pip install 'distillery[plot]'", file=sys.stderr)
        return EXIT_ERROR
    print(plot.summary(data, points))
    print(f"wrote {args.out}")
    return 0


RUN_EPILOG = """\
exit codes:
  0    the student was accepted
  3    the student was rejected by the targets
  2    invalid input (spec, teacher, data, output folder): fix it, a rerun will fail the same way
  1    any other failure, store or network trouble, SIGTERM: a rerun may succeed
  130  interrupted with Ctrl-C (SIGINT)

output folder:
  Distillery writes only its own files and lists them in <output>/.distillery-output.json.
  It refuses a non-empty folder it did not create (see --allow-nonempty-output), never
  overwrites or deletes a file it did not write, and holds a lock on a local output folder
  while it runs, so a second run on the same folder is refused.

interrupting:
  SIGTERM or Ctrl-C stops the run: progress.json says "interrupted", the temporary files
  (downloaded teacher and data) are removed, and running the same command again resumes
  from the last checkpoint.
"""


SEARCH_EPILOG = """\
exit codes:
  0    a trial's student met every target (the best one is marked > in the table)
  3    every trial ran and none met every target
  2    invalid input (spec, space, teacher, data): nothing was trained
  1    no trial could be measured (errors)
  130  interrupted with Ctrl-C (SIGINT)

output folder (the template's output.uri):
  trials/<search>-tNNN/  one DistillationJob output per trial
  cache/                 teacher outputs shared by every trial (unless output.cacheUri is set)
  search.json            the search's status: trials, frontier, bestTrial (rewritten after each trial)
  frontier.png           accuracy against latency of every trial, frontier highlighted

Running the same command again continues the search: finished trials are reused (no training),
an interrupted one resumes from its checkpoint, and sampling goes on from their results.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description="Distill teacher models into fast students.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run a DistillationJob locally (exit 0 accepted, 3 rejected, 2 invalid, 1 error)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RUN_EPILOG)
    run.add_argument("job", help="DistillationJob YAML (the same file you would kubectl apply)")
    run.add_argument("--restart", action="store_true",
                     help="discard this output's checkpoints, cached teacher outputs and result (only files "
                          "Distillery wrote there) and start over")
    run.add_argument("--allow-nonempty-output", action="store_true",
                     help="write into an output folder that already holds files Distillery did not write "
                          "(they are left alone; a file at a name Distillery writes is still refused)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the spec against the teacher and the data (as spec.dryRun: true), train "
                          "nothing, write nothing; exit 0 when it would start, 2 when it would be refused")
    run.add_argument("--json", action="store_true", help="print result.json instead of the table")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    search = sub.add_parser(
        "search", help="run a DistillationSearch locally, trials one after another (exit 0 a student met "
        "the targets, 3 none did, 2 invalid)", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SEARCH_EPILOG)
    search.add_argument("search", help="DistillationSearch YAML (the same file you would kubectl apply)")
    search.add_argument("--restart", action="store_true",
                        help="forget the previous trials of this search and start over (each trial's "
                             "checkpoints and result too)")
    search.add_argument("--json", action="store_true", help="print search.json (the search's status) instead of "
                        "the table")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")
    search.add_argument("--learn-from", metavar="DIR",
                        help="a previous search's output folder: its frontier trials' settings are tried first")
    search.set_defaults(func=cmd_search)

    validate = sub.add_parser("validate", help="check a DistillationJob file without running it")
    validate.add_argument("job")
    validate.set_defaults(func=cmd_validate)

    cmp_ = sub.add_parser("compare", help="compare two model directories (parameters, compression, shared layers)")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    cmp_.add_argument("--json", action="store_true")
    cmp_.set_defaults(func=cmd_compare)

    crds = sub.add_parser("crds", help="write the CRDs generated from the API models")
    crds.add_argument("--out", default="crds")
    crds.add_argument("--check", action="store_true", help="exit 1 when the files are out of date")
    crds.set_defaults(func=cmd_crds)
    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append", help="watch this namespace (repeatable; default: all)")
    op.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL ('' to disable)")
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(func=cmd_operator)
    fr = sub.add_parser("frontier", help="plot accuracy vs latency for result.json files or a cluster's StudentModels")
    fr.add_argument("results", nargs="*", metavar="RESULT.json", help="TrainerResult documents (result.json)")
    fr.add_argument("--out", default="frontier.png", help="PNG to write (default: frontier.png)")
    fr.add_argument("--title", help="plot title")
    fr.add_argument("--cluster", action="store_true", help="plot the StudentModels in the cluster instead")
    fr.add_argument("--namespace", help="with --cluster: this namespace only (default: all)")
    fr.set_defaults(func=cmd_frontier)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run reports its own): one line, no traceback
        print("error: interrupted (SIGINT)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
