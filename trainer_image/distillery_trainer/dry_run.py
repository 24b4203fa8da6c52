"""spec.dryRun: the checks a run makes before its teacher pass, and nothing else.

A user runs one to learn in seconds that a spec fits its teacher and data; a DistillationSearch
runs one before its first trial with the deepest student of its space (the operator never reads
models, so this is how it learns that a keepLayers is beyond the teacher). The teacher, student.base,
the ensemble and the data are read exactly as a run reads them; nothing is written to the output.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from distillery.api.job import DistillationJob
from distillery_trainer import preflight
from distillery_trainer.loading import load_inputs
from distillery_trainer.onnx_tools import providers_for
from distillery_trainer.progress import Progress

CHECKED = "Checked"


def check_only(job: DistillationJob, progress: Progress) -> str:
    """Runs the checks; returns the one-line summary. Raises InputError (exit 2) for bad input and
    StoreError (exit 1) when a store cannot be read, as a run would."""
    spec = job.spec
    preflight.check_spec(job)
    providers_for(spec.targets.hardware)
    progress.stage("loading", f"teacher {spec.teacher.uri} (dry run: checking, nothing is trained)")
    work = Path(tempfile.mkdtemp(prefix="distillery-check-"))
    try:
        inputs = load_inputs(job, work)
        preflight.check_inputs(job, inputs)
        return summary(job, inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(job: DistillationJob, inputs) -> str:
    """What was checked, with the facts a user would look up next (the source's depth, the rows)."""
    spec = job.spec
    source_path, fmt, field = ((inputs.base_path, spec.student.base.format, "student.base.uri")
                               if spec.student.base is not None and inputs.base_path is not None
                               else (inputs.teacher_path, spec.teacher.format, "teacher.uri"))
    facts = preflight.model_facts(source_path, fmt, field)
    depth = f"{facts.layers} layers" if facts.layers is not None else "no layers to extract"
    source = "student.base" if field == "student.base.uri" else "the teacher"
    return (f"the spec fits {source} ({depth}) and the data ({len(inputs.train)} train rows, "
            f"{len(inputs.eval)} eval rows); nothing was trained or written")


def termination_message(text: str, limit: int = 4000) -> str:
    """The pod's termination message: ok, no result file (the operator reads none for a dry run)."""
    return json.dumps({"ok": True, "dryRun": True, "reason": CHECKED, "message": text[:3000]},
                      separators=(",", ":"))[:limit]
