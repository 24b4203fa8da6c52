"""The DistillationJob resource: what to distill (spec) and what came of it (status)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from distillery.api.base import (
    API_VERSION,
    QUANTITY_PATTERN,
    ApiModel,
    Condition,
    cel,
    check_type_meta,
    crd_extra,
)

# ----------------------------------------------------------------------------- enums


class TeacherFormat(StrEnum):
    HUGGINGFACE = "huggingface"  # a directory with config.json, safetensors and a tokenizer
    ONNX = "onnx"  # a black-box teacher; soft labels come from onnxruntime
    TORCH = "torch"  # a built-in architecture: config.json + model.safetensors


class Task(StrEnum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    SENTENCE_EMBEDDING = "sentence-embedding"
    IMAGE_CLASSIFICATION = "image-classification"
    TABULAR_CLASSIFICATION = "tabular-classification"
    CAUSAL_LM = "causal-lm"  # a decoder language model (Llama, Qwen2, Mistral, GPT-2 layouts)


class DatasetFormat(StrEnum):
    JSONL = "jsonl"
    NPZ = "npz"


class ExtractionMethod(StrEnum):
    UNIFORM = "uniform"  # every k-th layer, DistilBERT-style
    FIRST = "first"  # the first N layers
    IMPORTANCE = "importance"  # rank layers on calibration data, drop the least important
    WEIGHT_RANGE = "weight-range"  # keep layers whose weight RMS lies in a range
    EXPLICIT = "explicit"  # exactly the layers listed in `layers`


class ImportanceMetric(StrEnum):
    BLOCK_INFLUENCE = "block-influence"  # 1 - cos(input, output) of each block (ShortGPT)
    ANGULAR_DISTANCE = "angular-distance"  # arccos(cos(input, output)) / pi
    # Task-aware: greedily drop the layer whose removal changes the model's outputs least.
    ABLATION = "ablation"


class TeacherLogits(StrEnum):
    """Where a causal LM's soft labels come from during healing."""

    TOP_K = "top-k"  # computed once, the k most likely next tokens per position cached
    ONLINE = "online"  # the teacher runs beside the student on every batch (full vocabulary)


class HiddenLossType(StrEnum):
    NONE = "none"
    COSINE = "cosine"
    MSE = "mse"


class AccuracyDropType(StrEnum):
    RELATIVE = "relative"  # (teacher - student) / teacher, as Intel Neural Compressor
    ABSOLUTE = "absolute"  # teacher - student


class Hardware(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class ExportFormat(StrEnum):
    ONNX = "onnx"
    SAFETENSORS = "safetensors"


class TolerationOperator(StrEnum):
    EQUAL = "Equal"
    EXISTS = "Exists"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class OptimizeFor(StrEnum):
    """Which measured variant (fp32, int8) a job keeps when several meet every target."""

    PARETO_SCORE = "paretoScore"  # speedup x accuracy retention, highest
    LATENCY = "latency"  # lowest latency
    ACCURACY = "accuracy"  # highest accuracy
    SIZE = "size"  # smallest file


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# ----------------------------------------------------------------------------- spec


class Teacher(ApiModel):
    """Where the teacher is and what it does."""

    uri: str = Field(min_length=1, description="file://, s3:// or a local path to the model")
    format: TeacherFormat = TeacherFormat.HUGGINGFACE
    task: Task = Task.SEQUENCE_CLASSIFICATION
    tokenizer_uri: str | None = Field(
        default=None,
        description="Tokenizer directory for an ONNX text teacher (default: the student base's)",
    )
    labels: list[str] | None = Field(
        default=None,
        max_length=10000,
        description="class names in the order of the teacher's outputs (default: the teacher's or "
        "student base's id2label, else the sorted label values)",
    )


class EnsembleTeacher(ApiModel):
    """One more teacher of an ensemble: same task and classes as `teacher`, reading the same inputs."""

    uri: str = Field(min_length=1, description="file://, s3:// or a local path to the model")
    format: TeacherFormat = TeacherFormat.HUGGINGFACE
    weight: float = Field(default=1.0, gt=0, le=1000, description="its share of the soft labels (normalized)")


class Ensemble(ApiModel):
    """More teachers whose soft labels are mixed with the teacher's. `teacher` stays the model the
    student is cut from and measured against (speedup, size); the student learns from the mixture."""

    teachers: list[EnsembleTeacher] = Field(min_length=1, max_length=16)
    teacher_weight: float = Field(default=1.0, gt=0, le=1000,
                                  description="`teacher`'s own share of the soft labels (normalized)")


class Dataset(ApiModel):
    """Train and eval splits and how to read them."""

    format: DatasetFormat = DatasetFormat.JSONL
    train_uri: str = Field(min_length=1)
    eval_uri: str = Field(min_length=1)
    text_field: str = "text"
    label_field: str = Field(
        default="label", description="JSONL field or NPZ array with the labels; may be absent for embedding"
    )
    features_field: str = Field(default="x", description="NPZ array with the inputs")
    max_train_rows: int | None = Field(default=None, ge=1)
    max_eval_rows: int | None = Field(default=None, ge=1)
    max_sequence_length: int = Field(
        default=128, ge=8, le=8192,
        description="longest tokenized row; for causal-lm, the length of the packed token blocks")
    prompt_template: str = Field(
        default="{text}\nTopic:", min_length=1, max_length=2000,
        description="causal-lm: zero-shot prompt for labelled eval rows ({text} is the row's text); "
        "each label is scored as the continuation ' <label>'")
    max_prompt_rows: int = Field(
        default=100, ge=1, le=100000,
        description="causal-lm: labelled eval rows scored zero-shot (spread over the split)")


class WeightRange(ApiModel):
    """Bounds on a layer's weight RMS for the weight-range method."""

    min: float = Field(default=0.0, ge=0)
    max: float = Field(default=1.0e9, gt=0)


class StudentArchitecture(ApiModel):
    """A freshly initialised built-in student (for ONNX teachers or from-scratch baselines)."""

    name: str = Field(description="mlp or cnn")
    hidden_size: int = Field(default=128, ge=1)
    num_blocks: int = Field(default=2, ge=1)


# How the operator hands the trainer the weights of student.base.studentModel (the spec is not changed).
STUDENT_BASE_URI_ENV = "DISTILLERY_STUDENT_BASE_URI"


class StudentBase(ApiModel):
    """The model whose layers are extracted when the teacher cannot provide them (ONNX), or the
    earlier student an incremental job continues: by URI, or in a cluster by StudentModel name."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(
            cel("has(self.uri) != has(self.studentModel)",
                "student.base needs exactly one of uri and studentModel"),
        )
    }

    uri: str | None = Field(default=None, min_length=1, description="the model's weights: file://, s3:// or a path")
    student_model: str | None = Field(
        default=None, min_length=1, max_length=253,
        description="a StudentModel in the job's namespace: its spec.artifacts.weights, resolved by the "
        "operator when the trainer starts (cluster only)")
    format: TeacherFormat = TeacherFormat.HUGGINGFACE

    @model_validator(mode="after")
    def _one_source(self) -> StudentBase:
        if (self.uri is None) == (self.student_model is None):
            raise ValueError("student.base needs exactly one of uri and studentModel")
        return self


class Vocabulary(ApiModel):
    """Vocabulary pruning for a domain: the student keeps the word embeddings of the tokens the
    train split uses (plus special tokens and a floor); its tokenizer either splits any text as
    the teacher's does, removed tokens becoming [UNK] (WordPiece), or spells removed tokens with
    kept pieces (BPE, Unigram / SentencePiece)."""

    prune: bool = Field(default=True, description="keep only the tokens the train split uses")
    min_count: int = Field(
        default=1, ge=1, le=1_000_000_000,
        description="times a token must occur in the encoded train split to stay")
    keep_tokens: int = Field(
        default=0, ge=0, le=10_000_000,
        description="floor: also keep the N lowest token ids (in a WordPiece vocabulary, placeholders and "
        "single characters, then the most common words)")


class Width(ApiModel):
    """Width pruning after the layer cut: attention heads and FFN neurons kept per layer, chosen
    by their activations on calibration batches (Minitron-style); BERT-family, DistilBERT and DeBERTa-v2/v3
    encoders and Llama-family decoders."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(
            cel("has(self.heads) || has(self.ffn) || has(self.maxParameters)",
                "student.width needs heads, ffn or maxParameters"),
            cel("!has(self.maxParameters) || !(has(self.heads) || has(self.ffn))",
                "set student.width.maxParameters or heads/ffn, not both"),
        )
    }

    heads: float | None = Field(
        default=None, gt=0, le=1,
        description="fraction of attention heads kept in every layer (absent: keep all)")
    ffn: float | None = Field(
        default=None, gt=0, le=1,
        description="fraction of FFN (intermediate) neurons kept in every layer (absent: keep all)")
    # Strict: the API server fails the CEL rules below on a whole float such as 3.0, so pydantic
    # must refuse it too rather than read it as 3.
    max_parameters: int | None = Field(
        default=None, ge=1, le=10**15, strict=True,
        description="instead of heads/ffn: a parameter budget for the layer-cut student after width pruning "
        "(before vocabulary pruning); the largest equal share of heads and FFN neurons that fits")
    calibration_batches: int | None = Field(
        default=None, ge=1, le=1000,
        description="train batches the importance is measured on (default: student.calibrationBatches)")

    @model_validator(mode="after")
    def _something_to_prune(self) -> Width:
        if self.heads is None and self.ffn is None and self.max_parameters is None:
            raise ValueError("student.width needs heads, ffn or maxParameters")
        if self.max_parameters is not None and (self.heads is not None or self.ffn is not None):
            raise ValueError("set student.width.maxParameters or heads/ffn, not both")
        return self


class Student(ApiModel):
    """How to get the student: layer extraction (depth pruning) and its size."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(
            cel(
                "!(has(self.keepLayers) && has(self.keepRatio))",
                "set only one of student.keepLayers and student.keepRatio",
            ),
            cel(
                "!has(self.method) || self.method != 'explicit' || (has(self.layers) && size(self.layers) > 0)",
                "student.method explicit needs student.layers",
            ),
        )
    }

    method: ExtractionMethod = ExtractionMethod.IMPORTANCE
    importance_metric: ImportanceMetric = ImportanceMetric.ABLATION
    keep_layers: int | None = Field(default=None, ge=1, description="number of layers to keep")
    keep_ratio: float | None = Field(default=None, gt=0, le=1, description="fraction of layers to keep")
    # A set in the CRD too, so the API server refuses duplicates rather than the operator later.
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, max_length=1024, description="explicit 0-based layer indices",
        json_schema_extra={"x-kubernetes-list-type": "set"})
    weight_range: WeightRange | None = None
    calibration_batches: int = Field(default=8, ge=1, le=1000)
    keep_first_and_last: bool | None = Field(
        default=None,
        description="never drop the first and last layers when scoring (default: true for causal-lm, "
        "where removing either costs the most perplexity; false otherwise)")
    base: StudentBase | None = None
    architecture: StudentArchitecture | None = None
    width: Width | None = Field(default=None, description="width pruning: attention heads and FFN neurons")
    vocabulary: Vocabulary | None = Field(
        default=None, description="vocabulary pruning: keep the tokens the train split uses")

    @model_validator(mode="after")
    def _one_size(self) -> Student:
        if self.keep_layers is not None and self.keep_ratio is not None:
            raise ValueError("set only one of student.keepLayers and student.keepRatio")
        if self.method == ExtractionMethod.EXPLICIT and not self.layers:
            raise ValueError("student.method explicit needs student.layers")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError("student.layers has duplicates")
        if self.layers is not None and any(i < 0 for i in self.layers):
            raise ValueError("student.layers must be 0-based, non-negative indices")
        return self


class HiddenLoss(ApiModel):
    """Optional hidden-state loss between the student's and teacher's last hidden states."""

    type: HiddenLossType = HiddenLossType.NONE
    weight: float = Field(default=1.0, ge=0)


class Ewc(ApiModel):
    """Elastic weight consolidation (Kirkpatrick et al. 2017): while healing on new data, a penalty
    lambda/2 * sum_i F_i (theta_i - theta_old_i)^2 holds each weight near student.base's value in
    proportion to how much the old data's loss depends on it (F: the diagonal empirical Fisher of
    student.base on incremental.previousTrainUri)."""

    lambda_: float = Field(alias="lambda", gt=0, le=1e12, description="the penalty's strength")
    fisher_batches: int = Field(default=8, ge=1, le=1000,
                                description="batches of the previous train split the Fisher is estimated on")


class Incremental(ApiModel):
    """Continue an earlier student (student.base, kept whole) on new data without forgetting the old:
    replay a share of the old rows, and/or distillation.ewc. The old eval split measures forgetting."""

    previous_train_uri: str = Field(min_length=1, description="the data student.base learned (replay, EWC)")
    previous_eval_uri: str = Field(min_length=1, description="the old eval split: accuracy before and after")
    replay_share: float = Field(
        default=0.0, ge=0, le=10,
        description="old train rows added to the new train split, as a share of its rows (0: none)")


class Distillation(ApiModel):
    """The healing step: soft-label knowledge distillation with temperature."""

    temperature: float = Field(default=2.0, gt=0, le=100)
    alpha: float = Field(
        default=0.5, ge=0, le=1,
        description="weight of the soft (KL) loss; 1 - alpha weighs the hard labels (causal-lm: "
        "cross-entropy on the text)")
    epochs: int = Field(default=3, ge=0, le=1000)
    learning_rate: float = Field(default=5.0e-5, gt=0, le=1)
    batch_size: int = Field(default=32, ge=1, le=65536)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0
    hidden_loss: HiddenLoss = Field(default_factory=HiddenLoss)
    teacher_logits: TeacherLogits = Field(
        default=TeacherLogits.TOP_K,
        description="causal-lm: cache the teacher's top-k next-token log-probabilities once, or run "
        "the teacher on every batch (online)")
    top_k: int = Field(
        default=64, ge=1, le=65536,
        description="causal-lm: next tokens kept per position in the cache (the rest is one bucket)")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, description="also checkpoint every N optimizer steps (default: by time only)")
    checkpoint_every_seconds: float = Field(
        default=120.0, gt=0, le=86400,
        description="checkpoint once this much wall time has passed since the last one, and at the end; "
        "a write costs about a second, so a time bound keeps it a small share of any step rate")
    ewc: Ewc | None = Field(default=None, description="incremental only: elastic weight consolidation")
    disable_dropout: bool = Field(
        default=False,
        description="train the student with dropout off: faster steps (no random masks); "
        "the saved model keeps its configured dropout",
    )


class Targets(ApiModel):
    """The acceptance rule: every target set must hold for the student to be accepted."""

    max_latency_ms: float | None = Field(default=None, gt=0)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    accuracy_drop_type: AccuracyDropType = AccuracyDropType.RELATIVE
    min_speedup: float | None = Field(
        default=None, gt=0, description="teacher latency / student latency (causal-lm: decode ms per token)")
    max_perplexity_increase: float | None = Field(
        default=None, ge=0,
        description="causal-lm: (student perplexity - teacher perplexity) / teacher perplexity on the eval text")
    max_size_bytes: int | None = Field(default=None, ge=1)
    max_memory_bytes: int | None = Field(
        default=None, ge=1,
        description="peak resident memory the model's onnxruntime session adds while running the benchmark "
        "batch (memoryBytes in the metrics; causal-lm: a prefill of that batch, empty KV cache)")
    hardware: Hardware = Hardware.CPU
    must_improve_frontier: bool = False
    optimize_for: OptimizeFor = Field(
        default=OptimizeFor.PARETO_SCORE,
        description="which variant becomes the student when several meet every target (and which one is "
        "reported when none does): paretoScore, latency, accuracy or size")


class Benchmark(ApiModel):
    """How latency is measured; teacher and student always share these settings."""

    batch_size: int = Field(default=8, ge=1, le=4096)
    sequence_length: int = Field(default=128, ge=1, le=8192)
    warmup: int = Field(default=5, ge=0, le=1000)
    iterations: int = Field(default=30, ge=3, le=100000)
    threads: int | None = Field(default=None, ge=1, le=1024, description="CPU threads; default all")
    decode_tokens: int = Field(
        default=32, ge=1, le=4096,
        description="causal-lm: tokens generated per decode measurement (batch 1, KV cache, after a "
        "prompt of sequenceLength tokens)")


class Export(ApiModel):
    formats: list[ExportFormat] = Field(
        default_factory=lambda: [ExportFormat.ONNX, ExportFormat.SAFETENSORS]
    )
    int8: bool = Field(default=False, description="also write model.int8.onnx (dynamic quantization)")
    opset: int = Field(default=17, ge=13, le=23)


class Output(ApiModel):
    """Where artifacts go and how to reach the store."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(
            cel(
                "!has(self.cacheUri) || self.cacheUri.startsWith('s3://') == self.uri.startsWith('s3://')",
                "output.cacheUri must be on the same kind of store as output.uri (both s3:// or both files)",
            ),
        )
    }

    uri: str = Field(min_length=1, description="artifact prefix: file://, s3:// or a local path")
    cache_uri: str | None = Field(
        default=None, min_length=1,
        description="teacher-output cache prefix on the same store and credentials (default "
        "<uri>/cache); entries are keyed by the teacher's files and the encoded data, so jobs "
        "distilling one teacher on one dataset can share it",
    )
    endpoint: str | None = Field(default=None, description="S3 endpoint URL (MinIO and the like)")
    region: str | None = None
    credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (cluster only)",
    )

    @model_validator(mode="after")
    def _same_store(self) -> Output:
        if self.cache_uri is not None and self.cache_uri.startswith("s3://") != self.uri.startswith("s3://"):
            raise ValueError("output.cacheUri must be on the same kind of store as output.uri "
                             "(both s3:// or both files)")
        return self


class Toleration(ApiModel):
    """A pod toleration, checked at apply time as the API server would check a pod's."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(
            cel(
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "a toleration without a key needs operator Exists",
            ),
            cel(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "a toleration with operator Exists takes no value",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds needs effect NoExecute",
            ),
        )
    }

    key: str | None = Field(default=None, max_length=317)
    operator: TolerationOperator | None = Field(default=None, description="Equal (the default) or Exists")
    value: str | None = Field(default=None, max_length=63)
    effect: TaintEffect | None = Field(default=None, description="empty: every effect")
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if not self.key and self.operator != TolerationOperator.EXISTS:
            raise ValueError("a toleration without a key needs operator Exists")
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


_QUANTITY_EXAMPLES = {"cpu": "e.g. 2, 1.5 or 500m", "memory": "e.g. 8Gi, 512Mi or 1G"}


def _quantity_field(what: str, examples: str) -> Any:
    """An optional Kubernetes quantity: the CRD carries the grammar as a pattern, pydantic checks
    the same grammar in Resources._quantities (with a message that names the field only)."""
    return Field(default=None, max_length=64, description=f"{what}, a Kubernetes quantity ({examples})",
                 json_schema_extra={"pattern": QUANTITY_PATTERN})


class Resources(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(cel(
            "!has(self.processesPerWorker) || !has(self.gpus) || self.gpus == 0 "
            "|| self.processesPerWorker <= self.gpus",
            "processesPerWorker cannot exceed gpus: each process trains on a GPU of its own"))
    }

    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per worker pod")
    # None rather than 1 by default: a new field with a value would change every existing job's spec hash.
    workers: int | None = Field(
        default=None, ge=1, le=64,
        description="pods that train together, data-parallel (torchrun on an Indexed Job; default 1); "
        "batchSize stays the global batch, so any count trains the same steps")
    processes_per_worker: int | None = Field(
        default=None, ge=1, le=64,
        description="training processes per pod: default one per GPU, else 1 (more for CPU-only runs)")
    cpu: str | None = _quantity_field("CPU request and limit", _QUANTITY_EXAMPLES["cpu"])
    memory: str | None = _quantity_field("memory request and limit", _QUANTITY_EXAMPLES["memory"])
    # Bounded so the API server can bound the cost of the tolerations' CEL rules.
    node_selector: dict[str, str] | None = Field(default=None, max_length=64)
    tolerations: list[Toleration] | None = Field(default=None, max_length=64)
    deadline_seconds: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_gpu_per_process(self) -> Resources:
        if self.processes_per_worker is not None and self.gpus and self.processes_per_worker > self.gpus:
            raise ValueError("processesPerWorker cannot exceed gpus: each process trains on a GPU of its own")
        return self

    def pods(self) -> int:
        """Worker pods."""
        return self.workers or 1

    def processes(self) -> int:
        """Training processes per worker pod."""
        return self.processes_per_worker or max(1, self.gpus)

    def world_size(self) -> int:
        return self.pods() * self.processes()

    @field_validator("cpu", "memory")
    @classmethod
    def _quantities(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not re.fullmatch(QUANTITY_PATTERN, value):
            raise ValueError(f"must be a Kubernetes quantity ({_QUANTITY_EXAMPLES[info.field_name]})")
        return value


class DistillationJobSpec(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": crd_extra(
            cel(
                "!has(self.teacher.format) || self.teacher.format != 'onnx' || "
                "(has(self.student) && (has(self.student.base) || has(self.student.architecture)))",
                "student.base or student.architecture is required when teacher.format is onnx",
            ),
            cel(
                "!has(self.targets) || !has(self.targets.maxPerplexityIncrease) || "
                "(has(self.teacher.task) && self.teacher.task == 'causal-lm')",
                "targets.maxPerplexityIncrease needs teacher.task causal-lm",
            ),
            cel(
                "!has(self.distillation) || !has(self.distillation.ewc) || has(self.incremental)",
                "distillation.ewc needs incremental (the previous data the Fisher is estimated on)",
            ),
            cel(
                "!has(self.incremental) || (has(self.student) && has(self.student.base) "
                "&& has(self.student.keepRatio) && self.student.keepRatio == 1.0)",
                "incremental continues student.base whole: set student.base and student.keepRatio: 1",
            ),
            cel(
                "!has(self.incremental) || !has(self.student) || "
                "(!has(self.student.width) && !has(self.student.vocabulary))",
                "incremental continues student.base whole: no student.width or student.vocabulary",
            ),
            cel(
                "!has(self.teacher.task) || self.teacher.task != 'causal-lm' || "
                "((!has(self.teacher.format) || self.teacher.format == 'huggingface') "
                "&& (!has(self.dataset.format) || self.dataset.format == 'jsonl'))",
                "teacher.task causal-lm needs a huggingface teacher and jsonl data",
            ),
        )
    }

    teacher: Teacher
    ensemble: Ensemble | None = Field(
        default=None, description="more teachers: the student learns from the weighted mixture of their "
        "soft labels and the teacher's (classification and sentence-embedding)")
    incremental: Incremental | None = Field(
        default=None, description="continue student.base on new data without forgetting the old")
    dataset: Dataset
    student: Student = Field(default_factory=Student)
    distillation: Distillation = Field(default_factory=Distillation)
    targets: Targets = Field(default_factory=Targets)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    export: Export = Field(default_factory=Export)
    output: Output
    resources: Resources = Field(default_factory=Resources)
    queue_name: str | None = Field(default=None, description="Kueue LocalQueue for the trainer Job")
    # None rather than False when unset, so that the spec's hash (exclude_none) stays what it was.
    dry_run: bool | None = Field(
        default=None, description="check the spec against the teacher and the data as a run does before its "
        "teacher pass (depth, positions, shapes, tokenizer), then stop: nothing is trained or written, and "
        "the job ends Succeeded with reason Checked (in the cluster on one pod without GPUs)")

    @model_validator(mode="after")
    def _consistent(self) -> DistillationJobSpec:
        if self.teacher.format == TeacherFormat.ONNX and not (
            self.student.base or self.student.architecture
        ):
            raise ValueError(
                "student.base or student.architecture is required when teacher.format is onnx "
                "(an ONNX teacher has no layers to extract)"
            )
        if self.targets.max_perplexity_increase is not None and self.teacher.task != Task.CAUSAL_LM:
            raise ValueError("targets.maxPerplexityIncrease needs teacher.task causal-lm")
        if self.teacher.task == Task.CAUSAL_LM and (
                self.teacher.format != TeacherFormat.HUGGINGFACE or self.dataset.format != DatasetFormat.JSONL):
            raise ValueError("teacher.task causal-lm needs a huggingface teacher and jsonl data")
        if self.distillation.ewc is not None and self.incremental is None:
            raise ValueError("distillation.ewc needs incremental (the previous data the Fisher is estimated on)")
        if self.incremental is not None and (self.student.base is None or self.student.keep_ratio != 1):
            raise ValueError("incremental continues student.base whole: set student.base and student.keepRatio: 1")
        if self.incremental is not None and (self.student.width is not None or self.student.vocabulary is not None):
            raise ValueError("incremental continues student.base whole: no student.width or student.vocabulary")
        return self


# ----------------------------------------------------------------------------- status


# progress.json's `ranks` holds at most this many other ranks (the trainer's MAX_LISTED_RANKS).
MAX_LISTED_RANKS = 32


class RankProgress(ApiModel):
    """One training process's progress in a distributed run."""

    rank: int = Field(ge=0, description="the process's rank (0 runs the pipeline)")
    stage: str = ""
    percent: float = 0.0
    epoch: int | None = None
    total_epochs: int | None = None


class Progress(ApiModel):
    stage: str = ""
    percent: float = 0.0
    epoch: int | None = None
    total_epochs: int | None = None
    message: str | None = None
    ranks: list[RankProgress] | None = Field(
        default=None, max_length=MAX_LISTED_RANKS + 1,
        description="a distributed run's processes where they are not all at the same point: rank 0 (whose "
        "progress the fields above show) and each rank at another stage or a point of percent or more apart "
        f"(at most {MAX_LISTED_RANKS}, those furthest from rank 0); absent while they move together")


class ModelMetrics(ApiModel):
    """What was measured for one model (teacher or student)."""

    accuracy: float | None = Field(default=None, description="the task's primary metric, 0..1")
    metric_name: str | None = Field(default=None, description="what accuracy means for this task")
    agreement: float | None = Field(default=None, description="share of predictions equal to the teacher's")
    fidelity: float | None = Field(default=None, description="mean cosine to the teacher's embeddings")
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    parameters: int | None = None
    size_bytes: int | None = None
    memory_bytes: int | None = Field(
        default=None, description="peak resident memory the onnxruntime session adds on the benchmark batch "
        "(host memory, measured in a fresh process)")
    num_layers: int | None = None
    latency_name: str | None = Field(
        default=None, description="what latency means: batch-ms (one benchmark batch) or decode-ms-per-token")
    perplexity: float | None = Field(default=None, description="causal-lm: held-out perplexity")
    prefill_tokens_per_second: float | None = Field(default=None, description="causal-lm: prompt throughput")
    zero_shot_accuracy: float | None = Field(
        default=None, description="causal-lm: labelled eval rows classified by label likelihood")


class Decision(ApiModel):
    accepted: bool
    reasons: list[str] = Field(default_factory=list)


class Artifacts(ApiModel):
    uri: str | None = None
    onnx: str | None = None
    onnx_int8: str | None = None
    weights: str | None = None
    metrics: str | None = None
    result: str | None = None
    model_card: str | None = None


class Variant(ApiModel):
    """One exported form of the student (fp32 ONNX, int8 ONNX), measured and judged on its own."""

    name: str = Field(description="fp32 or int8")
    artifact: str | None = Field(default=None, description="the file that is this variant")
    metrics: ModelMetrics
    speedup: float | None = Field(default=None, description="absent when the variant could not be judged")
    accuracy_retention: float | None = None
    compression_ratio: float | None = None
    pareto_score: float | None = None
    accepted: bool
    reasons: list[str] = Field(default_factory=list)


class DistillationJobStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    progress: Progress | None = None
    teacher: ModelMetrics | None = None
    student: ModelMetrics | None = None
    layers_kept: list[int] | None = None
    layer_scores: list[float] | None = None
    speedup: float | None = None
    accuracy_retention: float | None = None
    compression_ratio: float | None = None
    pareto_score: float | None = None
    accepted: bool | None = None
    decision: Decision | None = None
    variant: str | None = Field(default=None, description="the variant chosen as the student (fp32 or int8)")
    variants: list[Variant] | None = Field(default=None, description="every measured variant and its verdict")
    artifacts: Artifacts | None = None
    student_model: str | None = Field(default=None, description="the StudentModel registered")
    trainer_job: str | None = None
    world_size: int | None = Field(default=None, description="training processes of the trainer Job "
                                   "(resources.workers x processes per worker)")
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None


class ObjectMeta(ApiModel):
    """The part of metadata a local run cares about; the rest is the API server's."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = "local"
    namespace: str | None = None
    generation: int | None = None


class DistillationJob(ApiModel):
    api_version: str = API_VERSION
    kind: str = "DistillationJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: DistillationJobSpec
    status: DistillationJobStatus | None = None

    @model_validator(mode="after")
    def _kind(self) -> DistillationJob:
        check_type_meta(self.api_version, self.kind, "DistillationJob")
        return self
