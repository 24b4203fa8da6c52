"""The first stage: fetch and check everything a run needs before any heavy work.

A bad teacher, tokenizer or data file fails here, in seconds, with a message naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distillery.api.job import DatasetFormat, DistillationJob, ExtractionMethod, Task, TeacherFormat
from distillery.store import materialize
from distillery_trainer.data import LabelMap, Split, read_split
from distillery_trainer.encode import Encoded, encode_features, encode_text
from distillery_trainer.errors import InputError
from distillery_trainer.teacher import TEXT_TASKS

# Any one of these makes a directory a tokenizer (fast tokenizer, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


@dataclass
class Inputs:
    """Everything loaded before any heavy work: a bad input fails here, in seconds."""

    teacher_path: Path
    train: Split
    eval: Split
    labels: LabelMap | None
    tokenizer: object | None
    base_path: Path | None  # student.base, when the teacher has no layers to give


def fetch(uri: str, field: str, cache: Path, job: DistillationJob) -> Path:
    try:
        return materialize(uri, cache, endpoint=job.spec.output.endpoint, region=job.spec.output.region)
    except Exception as err:
        raise InputError(f"{field}: {err}") from None


def needs_labels(task: Task) -> bool:
    return task != Task.SENTENCE_EMBEDDING


def load_tokenizer(path: Path, field: str):
    from transformers import AutoTokenizer

    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer (every word [UNK]) without complaint.
        raise InputError(f"{field}: no tokenizer files in {path} (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise InputError(f"{field}: cannot load a tokenizer from {path}: {err}") from None


def teacher_label_names(path: Path, fmt: TeacherFormat) -> list[str] | None:
    """Class names a Hugging Face classifier was trained with (None when generic LABEL_i)."""
    if fmt != TeacherFormat.HUGGINGFACE:
        return None

    config = json.loads((path / "config.json").read_text())
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def teacher_class_count(path: Path, fmt: TeacherFormat) -> int | None:
    """How many classes the teacher predicts, read from its config or ONNX output shape."""

    if fmt == TeacherFormat.ONNX:
        import onnx

        file = path if path.is_file() else next(iter(sorted(path.glob("*.onnx"))), None)
        if file is None:
            return None
        dims = onnx.load(str(file), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
        return dims[-1].dim_value or None if dims else None
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    return config.get("num_classes") or (len(config["id2label"]) if config.get("id2label") else None)


def check_teacher_has_head(path: Path, job: DistillationJob) -> None:

    if job.spec.teacher.task != Task.SEQUENCE_CLASSIFICATION:
        return
    archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    if archs and not any("ForSequenceClassification" in a for a in archs):
        raise InputError(
            f"teacher.uri: {path} is a {archs[0]} without a classification head; fine-tune it "
            "first, or use teacher.task sentence-embedding"
        )


def load_inputs(job: DistillationJob, work: Path) -> Inputs:
    spec = job.spec
    task = spec.teacher.task
    if task in TEXT_TASKS and spec.dataset.format != DatasetFormat.JSONL:
        raise InputError(f"dataset.format: {task.value} needs jsonl text data, not {spec.dataset.format.value}")
    if task not in TEXT_TASKS and spec.dataset.format != DatasetFormat.NPZ:
        raise InputError(f"dataset.format: {task.value} needs npz arrays, not {spec.dataset.format.value}")
    if spec.student.method == ExtractionMethod.WEIGHT_RANGE and spec.student.weight_range is None:
        raise InputError("student.weightRange: required for method weight-range")

    teacher_path = fetch(spec.teacher.uri, "teacher.uri", work / "teacher", job)
    if spec.teacher.format == TeacherFormat.HUGGINGFACE:
        check_teacher_has_head(teacher_path, job)
    base_path = fetch(spec.student.base.uri, "student.base.uri", work / "base", job) if spec.student.base else None

    ds = spec.dataset
    train = read_split(fetch(ds.train_uri, "dataset.trainUri", work / "train", job), ds, "train",
                       ds.max_train_rows, needs_labels(task))
    evals = read_split(fetch(ds.eval_uri, "dataset.evalUri", work / "eval", job), ds, "eval",
                       ds.max_eval_rows, needs_labels(task))

    labels = None
    if train.raw_labels is not None:
        fmt = spec.teacher.format
        count = teacher_class_count(teacher_path, fmt) if task != Task.SENTENCE_EMBEDDING else None
        names = spec.teacher.labels or teacher_label_names(teacher_path, fmt)
        if names is None and base_path is not None:  # ONNX teacher: its classes are student.base's
            names = teacher_label_names(base_path, spec.student.base.format)
        labels = LabelMap.infer(train.raw_labels, names, count)
        train.labels = labels.encode(train.raw_labels, f"{ds.train_uri} (dataset.labelField)")
        if evals.raw_labels is not None:
            evals.labels = labels.encode(evals.raw_labels, f"{ds.eval_uri} (dataset.labelField)")

    tokenizer = None
    if task in TEXT_TASKS:
        if spec.teacher.format == TeacherFormat.ONNX:
            tok_uri = spec.teacher.tokenizer_uri
            tok_path = fetch(tok_uri, "teacher.tokenizerUri", work / "tokenizer", job) if tok_uri else base_path
            if tok_path is None:
                raise InputError("teacher.tokenizerUri: an ONNX text teacher needs a tokenizer")
            tokenizer = load_tokenizer(tok_path, "teacher.tokenizerUri")
        else:
            tokenizer = load_tokenizer(teacher_path, "teacher.uri")
    return Inputs(teacher_path, train, evals, labels, tokenizer, base_path)


def encode(split: Split, inputs: Inputs, job: DistillationJob) -> Encoded:
    if inputs.tokenizer is not None:
        return encode_text(split, inputs.tokenizer, job.spec.dataset.max_sequence_length)
    return encode_features(split)


