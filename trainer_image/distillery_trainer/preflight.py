"""Checks that need the teacher or the data but not a forward pass, run before any heavy work.

Where the pipeline calls them (both raise InputError, exit 2, with one line naming the field):

* ``check_spec(job)``: at the very start of ``pipeline.run``, before ``torch.manual_seed`` and
  before the output folder is touched. Pure: no I/O.
* ``check_inputs(job, inputs)``: right after ``loading.load_inputs`` (and before the teacher
  pass, teacher-output cache and layer selection). It reads only config files, safetensors
  headers and the ONNX graph's declared shapes, so it costs milliseconds, and a sequence length
  the teacher cannot take or a ``keepLayers`` above its depth fails here, not after training.

What a model can take is read from the files that describe it: a Hugging Face ``config.json``
(``num_hidden_layers``, ``max_position_embeddings``), a built-in model's ``config.json``
(``num_blocks``, ``input_dim``, ...), or an ONNX graph's input shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.api.job import (
    DistillationJob,
    ExtractionMethod,
    HiddenLossType,
    Task,
    TeacherFormat,
    TeacherLogits,
)
from distillery_trainer import extraction, vocabulary, width
from distillery_trainer.builtin import BuiltinConfig, read_builtin_config
from distillery_trainer.errors import InputError
from distillery_trainer.loading import Inputs, load_onnx_graph, read_config
from distillery_trainer.teacher import TEXT_TASKS

# torch's generators take 64-bit seeds and the trainer derives per-epoch seeds from this one
# (seed * 1_000_003 + epoch), so the range people actually use is also the safe one.
MAX_SEED = 2**32 - 1
# A freshly built student this large would not fit any machine; refuse it before allocating it.
MAX_ARCH_HIDDEN, MAX_ARCH_BLOCKS = 65_536, 1024
# RoBERTa-style models reserve padding_idx + 1 position ids, so they take two tokens fewer.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "ibert", "data2vec-text"}


@dataclass(frozen=True)
class ModelFacts:
    """What a model can take, as far as its files say (None: not stated, not checked)."""

    field: str  # the spec field that names the model, for messages
    layers: int | None = None
    max_positions: int | None = None
    positions_source: str = "max_position_embeddings in config.json"
    builtin: BuiltinConfig | None = None
    onnx_inputs: dict[str, tuple] | None = None  # input name -> dims (int, or None when dynamic)


# ----------------------------------------------------------------------------- spec only


def check_spec(job: DistillationJob) -> None:
    """What the spec alone can tell, beyond the API's own validation."""
    spec = job.spec
    seed = spec.distillation.seed
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"distillation.seed: must be in 0..{MAX_SEED}")
    arch = spec.student.architecture
    if arch is not None:
        if arch.name not in ("mlp", "cnn"):
            raise InputError("student.architecture.name: must be mlp or cnn")
        if arch.hidden_size > MAX_ARCH_HIDDEN:
            raise InputError(f"student.architecture.hiddenSize: at most {MAX_ARCH_HIDDEN}")
        if arch.num_blocks > MAX_ARCH_BLOCKS:
            raise InputError(f"student.architecture.numBlocks: at most {MAX_ARCH_BLOCKS}")
    if spec.incremental is not None and spec.teacher.task == Task.SENTENCE_EMBEDDING:
        raise InputError("incremental: for classification and causal-lm, not sentence-embedding (forgetting is "
                         "measured, and the EWC Fisher estimated, on the old rows' labels or text)")
    if spec.teacher.task == Task.CAUSAL_LM:
        check_causal_lm_spec(job)
    if spec.teacher.format == TeacherFormat.ONNX and spec.student.base is None and arch is None:
        raise InputError("student.base: an ONNX teacher has no layers to extract; give student.base "
                         "or student.architecture")
    student = spec.student
    protect = extraction.protects_ends(student, causal=spec.teacher.task == Task.CAUSAL_LM)
    scoring = student.method == ExtractionMethod.IMPORTANCE
    if protect and scoring and student.keep_layers is not None and student.keep_layers < 2:
        raise InputError("student.keepLayers: keeping the first and last layers needs at least 2 "
                         "(or set student.keepFirstAndLast: false)")
    width.check_spec(job)  # BERT-family Hugging Face students only
    vocabulary.check_spec(job)


def check_causal_lm_spec(job: DistillationJob) -> None:
    """What a causal-LM run does not do (yet), said before anything is downloaded."""
    spec = job.spec
    if spec.student.architecture is not None:
        raise InputError("student.architecture: a causal-lm student is cut from a decoder (the teacher, or "
                         "student.base); built-in architectures are not language models")
    if spec.student.base is not None and spec.student.base.format != TeacherFormat.HUGGINGFACE:
        raise InputError("student.base.format: a causal-lm student.base is a Hugging Face decoder directory")
    if spec.distillation.hidden_loss.type != HiddenLossType.NONE:
        raise InputError("distillation.hiddenLoss: not used for causal-lm (the student learns the teacher's "
                         "next-token distributions)")
    if spec.ensemble is not None and spec.distillation.teacher_logits == TeacherLogits.ONLINE:
        raise InputError("ensemble: a causal-lm ensemble mixes the teachers' cached next-token lists; use "
                         "distillation.teacherLogits: top-k (online runs one teacher beside the student)")


# ----------------------------------------------------------------------------- reading models


def check_safetensors(directory: Path, field: str) -> None:
    """Every *.safetensors file in a model directory has a well-formed header (cheap: the
    header only, memory-mapped), so a damaged file is named instead of crashing the loader."""
    from safetensors import safe_open

    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise InputError(f"{field}: {file} is not a valid safetensors file") from None


def _positive_int(config: dict, names: tuple[str, ...], where: str) -> int | None:
    for name in names:
        if name in config:
            value = config[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{where}: config.json {name} must be a positive integer")
            return value
    return None


def huggingface_facts(path: Path, field: str) -> ModelFacts:
    config = read_config(path, field)
    check_safetensors(path, field)
    layers = _positive_int(config, ("num_hidden_layers", "n_layer", "num_layers"), field)
    positions = _positive_int(config, ("max_position_embeddings", "n_positions"), field)
    if positions is not None and config.get("model_type") in _OFFSET_POSITION_MODELS:
        positions = max(1, positions - 2)
    return ModelFacts(field, layers=layers, max_positions=positions)


def builtin_facts(path: Path, field: str) -> ModelFacts:
    if not path.is_dir():
        raise InputError(f"{field}: {path} is a file; a torch model is a directory with config.json "
                         "and model.safetensors")
    if not (path / "config.json").is_file():
        raise InputError(f"{field}: {path} has no config.json")
    config = read_builtin_config(path / "config.json")
    check_safetensors(path, field)
    return ModelFacts(field, layers=config.num_blocks, builtin=config)


def onnx_facts(path: Path, field: str) -> ModelFacts:
    graph = load_onnx_graph(path, field)
    weights = {init.name for init in graph.initializer}
    inputs = {}
    for value in graph.input:
        if value.name in weights:  # older exporters list initializers as inputs
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in value.type.tensor_type.shape.dim)
        inputs[value.name] = dims
    if not inputs:
        raise InputError(f"{field}: the ONNX model has no inputs")
    positions, source = None, "its fixed input length"
    for name in ("input_ids", "attention_mask"):
        dims = inputs.get(name)
        if dims is not None and len(dims) == 2 and dims[1] is not None:
            positions = dims[1]
    if positions is None:
        source = "its position embedding table"
        # Exported encoders keep their learned position table as a weight: [positions, hidden].
        tables = [tuple(init.dims) for init in graph.initializer
                  if "position_embeddings" in init.name and len(init.dims) == 2]
        if len(tables) == 1:
            positions = int(tables[0][0])
    return ModelFacts(field, max_positions=positions, positions_source=source, onnx_inputs=inputs)


def model_facts(path: Path, fmt: TeacherFormat, field: str) -> ModelFacts:
    if fmt == TeacherFormat.HUGGINGFACE:
        return huggingface_facts(path, field)
    if fmt == TeacherFormat.TORCH:
        return builtin_facts(path, field)
    return onnx_facts(path, field)


# ----------------------------------------------------------------------------- checks


def check_depth(job: DistillationJob, source: ModelFacts | None) -> None:
    """keepLayers / explicit layers against the depth of the model the student is cut from."""
    student = job.spec.student
    if student.architecture is not None and student.base is None:
        depth, what = student.architecture.num_blocks, "student.architecture's"
    elif source is not None and source.layers is not None:
        depth, what = source.layers, ("the teacher's" if source.field == "teacher.uri" else "student.base's")
    else:
        return
    if student.method == ExtractionMethod.EXPLICIT and student.layers:
        bad = [i for i in student.layers if i >= depth]
        if bad:
            raise InputError(f"student.layers: {bad[:10]} out of range, {what} layers are 0..{depth - 1}")
        return
    if student.keep_layers is not None and student.keep_layers > depth:
        raise InputError(f"student.keepLayers: {student.keep_layers} is larger than {what} {depth} layers")
    extraction.target_size(student, depth)


def check_positions(job: DistillationJob, facts: ModelFacts) -> None:
    """Sequence lengths the run will feed against the positions the model has."""
    if job.spec.teacher.task not in TEXT_TASKS or facts.max_positions is None:
        return
    limit, source = facts.max_positions, facts.positions_source
    bench = job.spec.benchmark
    decode = bench.decode_tokens if job.spec.teacher.task == Task.CAUSAL_LM else 0
    for name, value in (("benchmark.sequenceLength" + (" + benchmark.decodeTokens" if decode else ""),
                         bench.sequence_length + decode),
                        ("dataset.maxSequenceLength", job.spec.dataset.max_sequence_length)):
        if value > limit:
            raise InputError(f"{name}: {value} is more than {facts.field}'s {limit} positions ({source})")


def check_onnx_shapes(job: DistillationJob, facts: ModelFacts, feature_shape: tuple | None) -> None:
    """A black-box teacher is fed batches of any size (and text of any length up to the limit):
    its inputs must have a dynamic batch axis, and array inputs the data's row shape."""
    for name, dims in (facts.onnx_inputs or {}).items():
        if dims and dims[0] is not None:
            raise InputError(f"{facts.field}: ONNX input {name!r} has a fixed batch size {dims[0]}; "
                             "export it with a dynamic batch axis")
        if name in ("input_ids", "attention_mask", "token_type_ids") and len(dims) == 2 and dims[1] is not None:
            raise InputError(f"{facts.field}: ONNX input {name!r} has a fixed sequence length {dims[1]}; "
                             "export it with a dynamic sequence axis")
    if feature_shape is not None and facts.onnx_inputs and len(facts.onnx_inputs) == 1:
        name, dims = next(iter(facts.onnx_inputs.items()))
        row = dims[1:]
        if len(row) != len(feature_shape) or any(d is not None and d != f for d, f in zip(row, feature_shape,
                                                                                              strict=False)):
            raise InputError(f"dataset.featuresField: rows have shape {feature_shape} but {facts.field}'s ONNX "
                             f"input {name!r} takes {tuple('?' if d is None else d for d in row)}")


def check_builtin_shapes(facts: ModelFacts, feature_shape: tuple) -> None:
    """Feature rows against what a built-in MLP/CNN takes."""
    config = facts.builtin
    if config is None:
        return
    want: str | None = None
    if config.architecture == "mlp":
        if feature_shape != (config.input_dim,):
            want = f"({config.input_dim},)"
    else:
        flat = config.in_channels * config.image_size[0] * config.image_size[1]
        ok = ((len(feature_shape) == 1 and feature_shape[0] == flat)
              or (len(feature_shape) == 2 and config.in_channels == 1)
              or (len(feature_shape) == 3 and feature_shape[0] == config.in_channels))
        if not ok:
            want = f"({flat},) or ({config.in_channels}, H, W)"
    if want is not None:
        raise InputError(f"dataset.featuresField: rows have shape {feature_shape} but {facts.field} "
                         f"(a built-in {config.architecture}) takes {want}")


def feature_shape_of(inputs: Inputs) -> tuple | None:
    """The per-row shape of the array data (None for text); train and eval must agree."""
    train, evals = inputs.train.features, inputs.eval.features
    if train is None or evals is None:
        return None
    if train.shape[1:] != evals.shape[1:]:
        raise InputError(f"dataset.evalUri: rows have shape {tuple(evals.shape[1:])} but the train split's "
                         f"have {tuple(train.shape[1:])}")
    return tuple(int(d) for d in np.shape(train)[1:])


def check_inputs(job: DistillationJob, inputs: Inputs) -> None:
    """Teacher (and student.base) against the spec and the data, before the teacher pass."""
    spec = job.spec
    teacher = model_facts(inputs.teacher_path, spec.teacher.format, "teacher.uri")
    base = None
    if spec.student.base is not None and inputs.base_path is not None:
        base = model_facts(inputs.base_path, spec.student.base.format, "student.base.uri")
    check_depth(job, base if spec.student.base is not None else teacher)
    width.check_source(job, inputs)  # the architecture and its head / neuron counts
    for facts in (teacher, base):
        if facts is not None:
            check_positions(job, facts)
    rows = feature_shape_of(inputs)
    if rows is not None:
        if not all(rows):
            raise InputError(f"dataset.featuresField: rows have shape {rows}; every axis needs a size")
        for facts in (teacher, base):
            if facts is not None:
                check_builtin_shapes(facts, rows)
    if teacher.onnx_inputs is not None:
        check_onnx_shapes(job, teacher, rows)
    if spec.teacher.task == Task.SENTENCE_EMBEDDING and spec.teacher.format == TeacherFormat.TORCH:
        raise InputError("teacher.format: torch (built-in mlp/cnn) does not support sentence-embedding")
    vocabulary.check_tokenizer(job, inputs.tokenizer)
