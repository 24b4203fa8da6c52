"""The first stage: fetch and check everything a run needs before any heavy work.

A bad teacher, tokenizer or data file fails here, in seconds, with a message naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distillery.api.job import (
    STUDENT_BASE_URI_ENV,
    DatasetFormat,
    DistillationJob,
    ExtractionMethod,
    StudentBase,
    Task,
    TeacherFormat,
)
from distillery.store import StoreError, materialize
from distillery_trainer.data import (
    CHUNK_ROWS,
    JoinedTextRows,
    LabelMap,
    Split,
    TextRows,
    read_jsonl,
    read_npz,
    read_split,
)
from distillery_trainer.encode import TEXT_CHUNK_ROWS, Encoded, encode_features, encode_text
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
    ensemble: list[Path] = field(default_factory=list)  # ensemble.teachers, in order
    previous_train: Split | None = None  # incremental: the data student.base learned
    previous_eval: Split | None = None
    replayed_rows: int = 0  # old train rows added to `train` (incremental.replayShare)


def fetch(uri: str, field: str, cache: Path, job: DistillationJob) -> Path:
    """A local path for `uri`. Nothing there is invalid input (exit 2); an unreachable or failing
    store is not (exit 1, retried): a network blip must not fail a job for good."""
    try:
        return materialize(uri, cache, endpoint=job.spec.output.endpoint, region=job.spec.output.region)
    except StoreError as err:
        if is_missing(err):
            raise InputError(f"{field}: {err}") from None
        raise


def is_missing(err: StoreError) -> bool:
    """Whether a store error says the object or bucket is not there (permanent), as opposed to
    a connection, timeout or server error (transient). The store words these messages."""
    text = str(err)
    return text.startswith(("not found:", "no such bucket:", "invalid key", "unsupported store URI",
                             "no bucket in"))


def read_config(path: Path, field: str) -> dict:
    """A model directory's config.json as a dict; a missing, non-UTF-8 or non-JSON file is named."""
    if not path.is_dir():
        raise InputError(f"{field}: {path} is a file; expected a model directory with config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(f"{field}: {path} has no config.json")
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{field}: {config_path} is not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{field}: {config_path} line {err.lineno}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise InputError(f"{field}: {config_path}: JSON nested too deeply") from None
    if not isinstance(config, dict):
        raise InputError(f"{field}: {config_path} must hold a JSON object")
    return config


def needs_labels(task: Task) -> bool:
    """Labels are optional for an embedding and for a causal LM (there, eval labels only feed the
    zero-shot task metric)."""
    return task not in (Task.SENTENCE_EMBEDDING, Task.CAUSAL_LM)


def load_tokenizer(path: Path, field: str):
    from transformers import AutoTokenizer

    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer (every word [UNK]) without complaint.
        raise InputError(f"{field}: no tokenizer files in {path} (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - tokenizers raise OSError, ValueError, TypeError, Rust errors
        raise InputError(f"{field}: cannot load a tokenizer from {path} ({type(err).__name__})") from None


def teacher_label_names(path: Path, fmt: TeacherFormat, field: str = "teacher.uri") -> list[str] | None:
    """Class names a Hugging Face classifier was trained with (None when generic LABEL_i)."""
    if fmt != TeacherFormat.HUGGINGFACE:
        return None
    id2label = read_config(path, field).get("id2label") or {}
    if not isinstance(id2label, dict) or not all(isinstance(k, str) and k.isdigit() for k in id2label):
        raise InputError(f"{field}: config.json id2label must map class ids (\"0\", \"1\", ...) to names")
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def onnx_file(path: Path) -> Path | None:
    """The ONNX file a teacher URI names: the file itself, or the first *.onnx in a folder."""
    return path if path.is_file() else next(iter(sorted(path.glob("*.onnx"))), None)


def load_onnx_graph(path: Path, field: str):
    """The ONNX model's graph without its external weights (cheap); a non-ONNX file is named."""
    import onnx

    file = onnx_file(path)
    if file is None:
        raise InputError(f"{field}: no .onnx file in {path}")
    try:
        return onnx.load(str(file), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise InputError(f"{field}: {file} is not an ONNX model") from None


def teacher_class_count(path: Path, fmt: TeacherFormat, field: str = "teacher.uri") -> int | None:
    """How many classes the teacher predicts, read from its config or ONNX output shape."""
    if fmt == TeacherFormat.ONNX:
        outputs = load_onnx_graph(path, field).output
        if not outputs:
            raise InputError(f"{field}: the ONNX model has no outputs")
        dims = outputs[0].type.tensor_type.shape.dim
        return dims[-1].dim_value or None if dims else None
    config = read_config(path, field)
    count = config.get("num_classes") or (len(config["id2label"]) if isinstance(config.get("id2label"), dict)
                                          and config["id2label"] else None)
    if count is not None and not (isinstance(count, int) and count > 0):
        raise InputError(f"{field}: config.json num_classes must be a positive integer")
    return count


def check_teacher_has_head(path: Path, job: DistillationJob) -> None:
    config = read_config(path, "teacher.uri")
    task = job.spec.teacher.task
    if task not in (Task.SEQUENCE_CLASSIFICATION, Task.CAUSAL_LM):
        return
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise InputError("teacher.uri: config.json architectures must be a list")
    if task == Task.CAUSAL_LM:
        if archs and not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise InputError(f"teacher.uri: {path} is not a causal language model (config.json architectures "
                             "name no *ForCausalLM / *LMHeadModel)")
        return
    if archs and not any("ForSequenceClassification" in str(a) for a in archs):
        raise InputError(
            f"teacher.uri: {path} is a model without a classification head (config.json architectures); "
            "fine-tune it first, or use teacher.task sentence-embedding"
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
    base_path = fetch(student_base_uri(spec.student.base), "student.base.uri", work / "base", job) \
        if spec.student.base else None

    ds = spec.dataset
    train = read_split(fetch(ds.train_uri, "dataset.trainUri", work / "train", job), ds, "train",
                       ds.max_train_rows, needs_labels(task), work / "arrays")
    evals = read_split(fetch(ds.eval_uri, "dataset.evalUri", work / "eval", job), ds, "eval",
                       ds.max_eval_rows, needs_labels(task), work / "arrays")
    previous = read_previous(job, work, needs_labels(task))
    # The old splits' classes count too: a class only the old data has is still the teacher's.
    previous_labels = [] if previous is None else previous[0].raw_labels + previous[1].raw_labels

    labels = None
    if task == Task.CAUSAL_LM:
        # The zero-shot task's classes are the eval split's labels; the train split's are unused.
        if evals.raw_labels is not None:
            labels = LabelMap.infer(evals.raw_labels, spec.teacher.labels, None)
            evals.labels = labels.encode(evals.raw_labels, f"dataset.evalUri {ds.eval_uri}", ds.label_field)
    elif train.raw_labels is not None:
        fmt = spec.teacher.format
        count = teacher_class_count(teacher_path, fmt) if task != Task.SENTENCE_EMBEDDING else None
        names = spec.teacher.labels or teacher_label_names(teacher_path, fmt)
        if names is None and base_path is not None:  # ONNX teacher: its classes are student.base's
            names = teacher_label_names(base_path, spec.student.base.format, "student.base.uri")
        labels = LabelMap.infer(train.raw_labels + previous_labels, names, count)
        train.labels = labels.encode(train.raw_labels, f"dataset.trainUri {ds.train_uri}", ds.label_field)
        if evals.raw_labels is not None:
            evals.labels = labels.encode(evals.raw_labels, f"dataset.evalUri {ds.eval_uri}", ds.label_field)
        if previous is not None:
            inc = spec.incremental
            previous[0].labels = labels.encode(previous[0].raw_labels, f"incremental.previousTrainUri "
                                               f"{inc.previous_train_uri}", ds.label_field)
            previous[1].labels = labels.encode(previous[1].raw_labels, f"incremental.previousEvalUri "
                                               f"{inc.previous_eval_uri}", ds.label_field)

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
    ensemble = load_ensemble(job, work, labels, tokenizer)
    replayed = 0
    if previous is not None and spec.incremental.replay_share > 0:
        train, replayed = with_replay(train, previous[0], spec.incremental.replay_share, spec.distillation.seed,
                                      work / "replay")
    return Inputs(teacher_path, train, evals, labels, tokenizer, base_path, ensemble,
                  previous_train=previous[0] if previous else None, previous_eval=previous[1] if previous else None,
                  replayed_rows=replayed)


def read_previous(job: DistillationJob, work: Path, labelled: bool = True) -> tuple[Split, Split] | None:
    """incremental's old train and eval splits, read like the new ones (labels required unless
    the task has none: a causal LM's old data is text)."""
    inc, ds = job.spec.incremental, job.spec.dataset
    if inc is None:
        return None
    splits = []
    for name, uri, field_name in (("previousTrain", inc.previous_train_uri, "incremental.previousTrainUri"),
                                  ("previousEval", inc.previous_eval_uri, "incremental.previousEvalUri")):
        path = fetch(uri, field_name, work / name, job)
        if not path.is_file():
            raise InputError(f"{field_name}: file not found: {path}")
        splits.append(read_jsonl(path, ds, name, None, labelled) if ds.format == DatasetFormat.JSONL
                      else read_npz(path, ds, name, None, labelled, work / "arrays"))
    return splits[0], splits[1]


def with_replay(train: Split, old: Split, share: float, seed: int, work: Path) -> tuple[Split, int]:
    """The new train split plus round(share * its rows) old rows, drawn without replacement
    (seeded; all of them when the share asks for more than there are). Texts left in their files
    stay there (read in turn); features are copied a chunk at a time into a memory-mapped file
    under `work`."""
    count = min(len(old), round(share * len(train)))
    pick = sorted(np.random.default_rng(seed).choice(len(old), size=count, replace=False).tolist())
    labelled = train.labels is not None and old.labels is not None  # a causal LM's text has none
    joined = Split(name=train.name, labels=np.concatenate([train.labels, old.labels[pick]]) if labelled else None,
                   raw_labels=train.raw_labels + [old.raw_labels[i] for i in pick] if labelled else None)
    if train.text_rows is not None and old.text_rows is not None and isinstance(old.text_rows, TextRows):
        joined.text_rows = JoinedTextRows([train.text_rows, old.text_rows.subset(pick)])
    elif train.is_text:
        old_texts = old.all_texts()
        joined.texts = train.all_texts() + [old_texts[i] for i in pick]
    else:
        joined.features = joined_features(train.features, old.features, pick, work / "replay-features.npy")
    return joined, count


def joined_features(first: np.ndarray, second: np.ndarray, pick: list[int], path: Path) -> np.ndarray:
    """`first` then `second[pick]` in one memory-mapped array at `path`, copied CHUNK_ROWS at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=first.dtype, shape=(len(first) + len(pick), *first.shape[1:]))
    for start in range(0, len(first), CHUNK_ROWS):
        part = first[start:start + CHUNK_ROWS]
        out[start:start + len(part)] = part
    for start in range(0, len(pick), CHUNK_ROWS):
        rows = pick[start:start + CHUNK_ROWS]
        out[len(first) + start:len(first) + start + len(rows)] = second[rows]
    out.flush()
    return out


def load_ensemble(job: DistillationJob, work: Path, labels: LabelMap | None, tokenizer) -> list[Path]:
    """Fetch ensemble.teachers and check that each fits the teacher: the same classes in the same
    order and, for text, the same tokenizer (every teacher reads the token ids encoded once)."""
    spec = job.spec
    if spec.ensemble is None:
        return []
    paths = []
    for i, member in enumerate(spec.ensemble.teachers):
        field = f"ensemble.teachers[{i}].uri"
        path = fetch(member.uri, field, work / f"ensemble-{i}", job)
        if member.format == TeacherFormat.HUGGINGFACE:
            check_member_head(path, job, field)
        if labels is not None:
            count = teacher_class_count(path, member.format, field)
            if count is not None and count != len(labels):
                raise InputError(f"{field}: it predicts {count} classes; the teacher's data has {len(labels)}")
            names = teacher_label_names(path, member.format, field)
            if names is not None and names != labels.names:
                raise InputError(f"{field}: its classes ({', '.join(names[:5])}...) are not the teacher's, "
                                 "in the same order; an ensemble needs one label space")
        reads_other_ids = tokenizer is not None and member.format == TeacherFormat.HUGGINGFACE \
            and load_tokenizer(path, field).get_vocab() != tokenizer.get_vocab()
        if reads_other_ids:
            raise InputError(f"{field}: its tokenizer is not the teacher's; every teacher of an ensemble "
                             "reads the same token ids")
        paths.append(path)
    return paths


def student_base_uri(base: StudentBase) -> str:
    """student.base's weights: its uri, or what the operator resolved its studentModel to."""
    if base.uri is not None:
        return base.uri
    resolved = os.environ.get(STUDENT_BASE_URI_ENV)
    if not resolved:
        raise InputError(f"student.base.studentModel: {base.student_model!r} names a StudentModel, which only the "
                         "operator resolves in a cluster; here give student.base.uri (the StudentModel's "
                         "spec.artifacts.weights)")
    return resolved


def check_member_head(path: Path, job: DistillationJob, field: str) -> None:
    """A Hugging Face ensemble member must have the teacher's kind of head: a classifier for
    classification, a language-model head for causal-lm."""
    config = read_config(path, field)
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not archs:
        return
    task = job.spec.teacher.task
    if task == Task.SEQUENCE_CLASSIFICATION and not any("ForSequenceClassification" in str(a) for a in archs):
        raise InputError(f"{field}: {path} is a model without a classification head (config.json architectures)")
    if task == Task.CAUSAL_LM and not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise InputError(f"{field}: {path} is not a causal language model (config.json architectures name no "
                         "*ForCausalLM / *LMHeadModel)")


def encode(split: Split, inputs: Inputs, job: DistillationJob, into: Path | None = None) -> Encoded:
    """The split as tensors; text is tokenized in chunks into memory-mapped files under `into`
    (in memory without it)."""
    if job.spec.teacher.task == Task.CAUSAL_LM:
        from distillery_trainer.lm.text_blocks import pack_blocks

        field = "dataset.evalUri" if split is inputs.eval else "dataset.trainUri"
        return pack_blocks(split.text_chunks(TEXT_CHUNK_ROWS), inputs.tokenizer, job.spec.dataset.max_sequence_length,
                           field, into)
    if inputs.tokenizer is not None:
        return encode_text(split, inputs.tokenizer, job.spec.dataset.max_sequence_length, into)
    return encode_features(split)


