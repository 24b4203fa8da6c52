"""Writing a run's artifacts to the store; result.json goes last so its presence means the set is complete."""

from __future__ import annotations

import json
from pathlib import Path

from distillery.api.job import DistillationJob, ExportFormat
from distillery.api.result import METRICS_KEY, RESULT_KEY, TrainerResult
from distillery.compare import PROVENANCE
from distillery_trainer import report


def write_provenance(weights_dir: Path, job: DistillationJob, layers: list[int], teacher_layers: int | None) -> None:
    """Where the student came from, next to its weights (read by `distillery compare`)."""
    body = {"teacherUri": job.spec.teacher.uri, "teacherLayers": teacher_layers, "layersKept": layers,
            "task": job.spec.teacher.task.value, "job": job.metadata.name}
    (weights_dir / PROVENANCE).write_text(json.dumps(body, indent=2) + "\n")


def artifact_uris(store, spec, has_int8: bool) -> dict:
    out = {"uri": store.uri_for(""), "metrics": store.uri_for(METRICS_KEY),
           "result": store.uri_for(RESULT_KEY), "model_card": store.uri_for("README.md")}
    if ExportFormat.ONNX in spec.export.formats:
        out["onnx"] = store.uri_for("model.onnx")
        if has_int8:
            out["onnx_int8"] = store.uri_for("model.int8.onnx")
    if ExportFormat.SAFETENSORS in spec.export.formats:
        out["weights"] = store.uri_for("model/")
    return out


def write_artifacts(store, spec, staging: Path, weights_dir: Path, result: TrainerResult, job) -> None:
    """Upload every artifact; result.json goes last so its presence means the set is complete.
    The JSON documents are strict JSON: a NaN or infinity fails here rather than being written."""
    if ExportFormat.SAFETENSORS in spec.export.formats:
        store.upload_tree(weights_dir, "model")
    if ExportFormat.ONNX in spec.export.formats:
        store.upload_file(staging / "model.onnx", "model.onnx")
        if (staging / "model.int8.onnx").is_file():
            store.upload_file(staging / "model.int8.onnx", "model.int8.onnx")
    store.write_text(METRICS_KEY, json.dumps(report.metrics_document(result), indent=2, allow_nan=False) + "\n")
    store.write_text("README.md", report.model_card(result, job))
    store.write_text(RESULT_KEY, result.to_json())
