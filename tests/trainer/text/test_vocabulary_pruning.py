"""Vocabulary pruning (student.vocabulary) on the tiny BERT teacher with MiniLM's WordPiece tokenizer.

What must hold: the student keeps the embedding rows of the tokens the train split uses (plus the
special tokens and the floor); its saved tokenizer splits any text as the teacher's does, each id
being the teacher's id mapped old -> new with removed tokens as [UNK]; the saved directory and the
ONNX file, fed by that tokenizer from raw text, give what the trainer measured; a resumed run
re-applies the same vocabulary; and bad input is one clear line before the teacher pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distillery.api import load_job
from distillery.api.result import TrainerResult
from distillery_trainer import vocabulary
from distillery_trainer.checkpoint import CheckpointState, CorruptCheckpoint
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress

from .conftest import MAX_LENGTH, read_jsonl

PRUNE = {"vocabulary": {"prune": True}}
# A sentence of words BBC business/tech/sport news rarely has, split into several WordPiece pieces.
RARE_TEXT = "Xylophonists serenaded unbelievably quarrelsome axolotls; the flamingos' choreography dazzled."


class Log:
    """A Progress stand-in that keeps the log lines (the run's own progress otherwise)."""

    def __init__(self):
        self.lines: list[str] = []
        self.progress = Progress(show_bar=False)
        self.progress.log = self.lines.append


def run_into(text_job, out: Path, progress: Progress | None = None, **spec) -> TrainerResult:
    return run(load_job(text_job(out.as_uri(), **spec)), progress=progress or Progress(show_bar=False))


@pytest.fixture(scope="module")
def teacher_tokenizer(tiny_teacher):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_teacher.path))


def encode_texts(tokenizer, texts: list[str]) -> Encoded:
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding="longest", return_tensors="pt")
    return Encoded({"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}, None)


def train_token_ids(tokenizer, bbc_data) -> set[int]:
    """Every id of the train split as the run encodes it (truncated to MAX_LENGTH), counted here
    independently of the trainer: one row at a time, no padding."""
    ids: set[int] = set()
    for row in read_jsonl(bbc_data.train):
        ids.update(tokenizer(row["text"], truncation=True, max_length=MAX_LENGTH)["input_ids"])
    return ids


@pytest.fixture(scope="module")
def kept_ids(teacher_tokenizer, bbc_data) -> list[int]:
    return sorted(train_token_ids(teacher_tokenizer, bbc_data) | set(teacher_tokenizer.all_special_ids))


@pytest.fixture(scope="module")
def pruned_tokenizer_dir(teacher_tokenizer, kept_ids, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pruned-tokenizer")
    vocabulary.save_tokenizer(teacher_tokenizer, kept_ids, out, out)
    return out


# ----------------------------------------------------------------------------- choosing the tokens


def test_choose_kept_is_train_tokens_with_min_count_plus_always_plus_floor():
    counts = torch.tensor([0, 5, 0, 1, 2, 0, 0, 9])
    assert vocabulary.choose_kept(counts, {0}, min_count=1, keep_tokens=0) == [0, 1, 3, 4, 7]
    assert vocabulary.choose_kept(counts, {0}, min_count=2, keep_tokens=0) == [0, 1, 4, 7]
    assert vocabulary.choose_kept(counts, {5}, min_count=3, keep_tokens=3) == [0, 1, 2, 5, 7]
    assert vocabulary.choose_kept(counts, set(), min_count=1, keep_tokens=100) == list(range(8))


def test_kept_set_on_bbc_is_the_train_tokens_and_the_specials(teacher_tokenizer, bbc_data, kept_ids, tiny_teacher):
    from distillery_trainer.loading import load_tokenizer
    from distillery_trainer.nets import HFNet

    tokenizer = load_tokenizer(tiny_teacher.path, "teacher.uri")
    net = HFNet.load(tiny_teacher.path, job_task(), 5)
    data = encode_texts(tokenizer, [r["text"] for r in read_jsonl(bbc_data.train)])
    rows = vocabulary.embedding_rows(net)
    kept = vocabulary.choose_kept(vocabulary.token_counts(data, rows), vocabulary.always_kept(net, tokenizer),
                                  min_count=1, keep_tokens=0)
    assert kept == kept_ids
    assert rows == 30522 and 2000 < len(kept) < 10000  # a domain uses a small share of the vocabulary


def job_task():
    from distillery.api.job import Task

    return Task.SEQUENCE_CLASSIFICATION


# ----------------------------------------------------------------------------- the tokenizer


def test_pruned_tokenizer_gives_the_mapped_original_ids(teacher_tokenizer, pruned_tokenizer_dir, kept_ids, bbc_data):
    from transformers import AutoTokenizer

    pruned = AutoTokenizer.from_pretrained(str(pruned_tokenizer_dir))
    table = vocabulary.id_table(kept_ids, 30522, teacher_tokenizer.unk_token_id)
    unk_new = kept_ids.index(teacher_tokenizer.unk_token_id)
    texts = [RARE_TEXT] + [r["text"] for r in read_jsonl(bbc_data.eval)]
    removed_seen = 0
    for text in texts:
        original = teacher_tokenizer(text)["input_ids"]
        mine = pruned(text)["input_ids"]
        assert mine == table[torch.tensor(original)].tolist()
        assert pruned.convert_ids_to_tokens(mine) == [
            t if i != unk_new else "[UNK]" for t, i in zip(teacher_tokenizer.convert_ids_to_tokens(original), mine,
                                                         strict=True)]
        removed_seen += sum(1 for i in original if i not in set(kept_ids))
    assert removed_seen > 10, "the texts must contain pieces the pruned vocabulary removed"
    # Batches with padding, and sentence pairs, map the same way.
    original = teacher_tokenizer([RARE_TEXT, "hi"], ["a second part", RARE_TEXT], padding=True, return_tensors="pt")
    mine = pruned([RARE_TEXT, "hi"], ["a second part", RARE_TEXT], padding=True, return_tensors="pt")
    assert torch.equal(mine["input_ids"], table[original["input_ids"]])
    assert torch.equal(mine["attention_mask"], original["attention_mask"])
    assert torch.equal(mine["token_type_ids"], original["token_type_ids"])
    # Special tokens are where the model expects them, and decode shows removed pieces as [UNK].
    assert pruned.pad_token_id == kept_ids.index(0) and pruned.unk_token_id == unk_new
    assert "[UNK]" in pruned.decode(pruned(RARE_TEXT)["input_ids"])


def test_deleting_the_removed_strings_would_change_segmentation(teacher_tokenizer, kept_ids, bbc_data):
    """Why removed strings stay (as [UNK]): a WordPiece vocabulary without them splits other
    words differently, so ids would no longer be the teacher's mapped old -> new."""
    from tokenizers import Tokenizer

    doc = json.loads(teacher_tokenizer.backend_tokenizer.to_str())
    doc["padding"], doc["truncation"] = None, None
    kept = set(kept_ids)
    names = {i: s for s, i in doc["model"]["vocab"].items()}
    doc["model"]["vocab"] = {names[old]: new for new, old in enumerate(kept_ids)}
    for token in doc["added_tokens"]:
        token["id"] = kept_ids.index(token["id"])
    doc["post_processor"]["special_tokens"]["[CLS]"]["ids"] = [kept_ids.index(101)]
    doc["post_processor"]["special_tokens"]["[SEP]"]["ids"] = [kept_ids.index(102)]
    deleted = Tokenizer.from_str(json.dumps(doc))
    table = vocabulary.id_table(kept_ids, 30522, teacher_tokenizer.unk_token_id)
    differ = 0
    for text in [RARE_TEXT] + [r["text"] for r in read_jsonl(bbc_data.eval)]:
        original = teacher_tokenizer(text)["input_ids"]
        if any(i not in kept for i in original):
            differ += deleted.encode(text).ids != table[torch.tensor(original)].tolist()
    assert differ > 0


def test_tokenizer_files_of_the_pruned_student(pruned_tokenizer_dir, kept_ids):
    names = {p.name for p in pruned_tokenizer_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert "vocab.txt" not in names  # it lists the teacher's ids
    doc = json.loads((pruned_tokenizer_dir / "tokenizer.json").read_text())
    ids = set(doc["model"]["vocab"].values())
    assert ids == set(range(len(kept_ids)))  # every new id has its string; nothing points past the matrix
    assert len(doc["model"]["vocab"]) == 30522  # every string stays, so text splits as before
    # padding and truncation as the teacher's file ships them (not the run's last call's), ids renumbered
    assert doc["truncation"]["max_length"] == 128 and doc["padding"]["strategy"] == {"Fixed": 128}
    assert doc["padding"]["pad_id"] == kept_ids.index(0)
    assert [t["id"] for t in doc["added_tokens"]] == [kept_ids.index(i) for i in (0, 100, 101, 102, 103)]


# ----------------------------------------------------------------------------- the model


def test_embedding_rows_are_the_teachers_rows_for_kept_ids(tiny_teacher, kept_ids):
    from distillery_trainer.nets import HFNet

    teacher = HFNet.load(tiny_teacher.path, job_task(), 5)
    student = teacher.with_layers([0, 3])
    vocabulary.prune_embeddings(student, kept_ids)
    old = teacher.model.get_input_embeddings().weight
    new = student.model.get_input_embeddings()
    assert new.weight.shape == (len(kept_ids), old.shape[1])
    assert torch.equal(new.weight, old[torch.tensor(kept_ids)])
    assert student.model.config.vocab_size == len(kept_ids)
    assert new.padding_idx == kept_ids.index(0) == student.model.config.pad_token_id
    assert teacher.model.get_input_embeddings().num_embeddings == 30522  # the teacher is untouched
    removed = (30522 - len(kept_ids)) * old.shape[1]
    assert teacher.with_layers([0, 3]).parameter_count() - student.parameter_count() == removed


def test_tied_output_embeddings_shrink_with_the_input_ones():
    from transformers import BertConfig, BertForMaskedLM

    from distillery_trainer.nets import HFNet

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, tie_word_embeddings=True)
    net = HFNet(BertForMaskedLM(config), job_task(), None)
    before_in = net.model.get_input_embeddings().weight.detach().clone()
    before_bias = net.model.get_output_embeddings().bias.detach().clone()
    kept = [0, 3, 7, 49]
    vocabulary.prune_embeddings(net, kept)
    out = net.model.get_output_embeddings()
    assert out.weight is net.model.get_input_embeddings().weight  # still tied
    assert torch.equal(out.weight, before_in[kept]) and torch.equal(out.bias, before_bias[kept])
    logits = net.model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 4)


def test_eval_unknown_count_on_a_crafted_row(teacher_tokenizer):
    train = encode_texts(teacher_tokenizer, ["the cat sat on the mat"])
    evals = encode_texts(teacher_tokenizer, ["the dog sat on the mat", "a cat"])
    special = torch.tensor(teacher_tokenizer.all_special_ids)
    always = set(teacher_tokenizer.all_special_ids)
    kept = vocabulary.choose_kept(vocabulary.token_counts(train, 30522), always, 1, 0)
    report = vocabulary.vocabulary_report(kept, 30522, 64, train, evals, special, teacher_tokenizer.unk_token_id)
    # kept: the 5 specials + the, cat, sat, on, mat; eval text tokens: 6 + 2, of which "dog" and "a" are gone.
    assert report.kept_tokens == 10 and report.original_tokens == 30522
    assert report.train_tokens == 6 and report.train_tokens_unknown == 0
    assert report.eval_tokens == 8 and report.eval_tokens_unknown == 2 and report.eval_unknown_share == 0.25
    assert report.embedding_parameters_removed == (30522 - 10) * 64
    assert report.embedding_share_removed == round(1 - 10 / 30522, 6)


# ----------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def depth_only(text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    out = tmp_path_factory.mktemp("depth-only")
    return out, run_into(text_job, out, name="tiny-bert-depth", distillation={"epochs": 2})


@pytest.fixture(scope="module")
def pruned(text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    out = tmp_path_factory.mktemp("vocab-pruned")
    return out, run_into(text_job, out, name="tiny-bert-vocab", student=PRUNE, distillation={"epochs": 2})


def test_pruned_run_reports_its_vocabulary_and_is_smaller(pruned, depth_only, kept_ids, teacher_tokenizer, bbc_data):
    out, result = pruned
    _, depth = depth_only
    v = result.vocabulary
    assert v is not None and depth.vocabulary is None
    assert v.original_tokens == 30522 and v.kept_tokens == len(kept_ids)
    assert v.embedding_parameters_removed == (30522 - len(kept_ids)) * 64
    assert result.layers_kept == depth.layers_kept  # the same depth cut
    assert depth.student.parameters - result.student.parameters == v.embedding_parameters_removed
    assert result.student.size_bytes < depth.student.size_bytes * 0.5
    assert result.compression_ratio > depth.compression_ratio
    # Every train token is kept (minCount 1); the eval count is checked against the teacher's tokenizer.
    assert v.train_tokens_unknown == 0
    special, kept = set(teacher_tokenizer.all_special_ids), set(kept_ids)
    total = lost = 0
    for row in read_jsonl(bbc_data.eval):
        ids = [i for i in teacher_tokenizer(row["text"], truncation=True, max_length=MAX_LENGTH)["input_ids"]
               if i not in special]
        total += len(ids)
        lost += sum(1 for i in ids if i not in kept)
    assert (v.eval_tokens, v.eval_tokens_unknown) == (total, lost)
    assert lost > 0
    assert v.eval_unknown_share == pytest.approx(lost / total, abs=1e-6)
    assert result.onnx_max_abs_diff < 1e-3
    stored = TrainerResult.model_validate(json.loads((out / "result.json").read_text()))
    assert stored.vocabulary == v
    assert json.loads((out / "metrics.json").read_text())["vocabulary"]["keptTokens"] == v.kept_tokens
    assert "Vocabulary pruning" in (out / "README.md").read_text()
    state = json.loads((out / "checkpoints" / "latest.json").read_text())["state"]
    assert state["vocabulary"] == kept_ids


def eval_batch(tokenizer, bbc_data):
    rows = read_jsonl(bbc_data.eval)
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH, padding=True,
                    return_tensors="pt")
    labels = torch.tensor([bbc_data.classes.index(r["label"]) for r in rows])
    return enc, labels


def test_saved_student_from_raw_text_gives_the_measured_accuracy(pruned, bbc_data, kept_ids):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, result = pruned
    model_dir = out / "model"
    assert not (model_dir / "vocab.txt").exists()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    assert model.config.vocab_size == len(kept_ids) == model.get_input_embeddings().num_embeddings
    enc, labels = eval_batch(tokenizer, bbc_data)
    assert int(enc["input_ids"].max()) < len(kept_ids)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    correct = int((logits.argmax(1) == labels).sum())
    assert correct == round(result.student.accuracy * len(labels))  # the very predictions measured


def test_onnx_student_from_raw_text_gives_the_measured_accuracy(pruned, bbc_data):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out, result = pruned
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    enc, labels = eval_batch(tokenizer, bbc_data)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: enc[k].numpy() for k in ("input_ids", "attention_mask") if k in names}
    logits = torch.from_numpy(session.run(None, feed)[0])
    correct = int((logits.argmax(1) == labels).sum())
    assert correct == round(result.student.accuracy * len(labels))


def test_resumed_run_reapplies_the_same_vocabulary(pruned, text_job, tmp_path):
    out, result = pruned
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / "result.json").unlink()  # as if it had stopped after its last checkpoint
    log = Log()
    resumed = run_into(text_job, again, progress=log.progress, name="tiny-bert-vocab", student=PRUNE,
                       distillation={"epochs": 2})
    assert any(line.startswith("resuming from step") for line in log.lines), log.lines
    assert not any("ignoring the checkpoint" in line for line in log.lines), log.lines
    assert resumed.training.resumed_from_step == result.training.steps
    assert resumed.vocabulary == result.vocabulary
    assert resumed.student.accuracy == result.student.accuracy
    assert resumed.student.parameters == result.student.parameters


def test_depth_width_vocabulary_and_int8_compose(text_job, depth_only, bbc_data, kept_ids, tmp_path):
    """All cuts in one run: the saved student still takes raw text and gives the measured accuracy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, depth = depth_only
    result = run_into(text_job, tmp_path, name="tiny-bert-all-cuts", distillation={"epochs": 2},
                      student={"width": {"heads": 0.5, "ffn": 0.5}, **PRUNE}, export={"int8": True})
    assert result.width is not None and result.vocabulary.kept_tokens == len(kept_ids)
    fp32, int8 = result.metrics_of("fp32"), result.metrics_of("int8")
    assert int8 is not None and int8.size_bytes < fp32.size_bytes
    # width is cut first (its report counts before the vocabulary), then the vocabulary
    assert fp32.parameters == result.width.parameters_after - result.vocabulary.embedding_parameters_removed
    assert result.width.parameters_before == depth.student.parameters
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model")).eval()
    enc, labels = eval_batch(tokenizer, bbc_data)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert int((logits.argmax(1) == labels).sum()) == round(fp32.accuracy * len(labels))


def test_onnx_teacher_with_student_base_prunes_the_bases_vocabulary(tiny_teacher, text_job, bbc_data, kept_ids,
                                                                     tmp_path):
    """A black-box teacher: the tokenizer and the embeddings come from student.base."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery_trainer.nets import HFNet
    from distillery_trainer.onnx_tools import example_inputs, export_onnx

    net = HFNet.load(tiny_teacher.path, job_task())
    teacher = export_onnx(net, tmp_path / "teacher" / "teacher.onnx", example_inputs(net, 2, 16, ()), 17)
    out = tmp_path / "out"
    doc = text_job(out.as_uri(), name="tiny-bert-onnx-vocab", distillation={"epochs": 1},
                   student={"method": "first", "keepLayers": 2, **PRUNE,
                            "base": {"uri": tiny_teacher.path.as_uri(), "format": "huggingface"}})
    doc["spec"]["teacher"] = {"uri": teacher.as_uri(), "format": "onnx", "task": "sequence-classification"}
    result = run(load_job(doc), progress=Progress(show_bar=False))
    assert result.vocabulary.kept_tokens == len(kept_ids)
    assert result.teacher.latency_p50_ms > 0  # the ONNX teacher takes the benchmark batch's ids too
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()
    enc, labels = eval_batch(tokenizer, bbc_data)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert int((logits.argmax(1) == labels).sum()) == round(result.student.accuracy * len(labels))


class _Ctx:
    """What prune_resumed reads from the run context."""

    def __init__(self, job, tokenizer, train):
        self.job, self.train_data = job, train
        self.inputs = type("Inputs", (), {"tokenizer": tokenizer})()


def test_checkpoint_with_another_vocabulary_is_dropped(tiny_teacher, text_job, teacher_tokenizer, bbc_data,
                                                       kept_ids, tmp_path):
    from distillery_trainer.nets import HFNet

    job = load_job(text_job(tmp_path.as_uri(), student=PRUNE))
    ctx = _Ctx(job, teacher_tokenizer, encode_texts(teacher_tokenizer, [r["text"] for r in read_jsonl(bbc_data.train)]))
    student = HFNet.load(tiny_teacher.path, job_task(), 5).with_layers([0, 3])

    def state(vocab):
        return CheckpointState("f", [0, 3], [], 0, 0, 1, vocabulary=vocab)

    for bad, why in ((kept_ids[:-1], "not the one this spec keeps"), (None, "no pruned vocabulary")):
        with pytest.raises(CorruptCheckpoint, match=why):
            vocabulary.prune_resumed(ctx, student, state(bad))
    plain = _Ctx(load_job(text_job(tmp_path.as_uri())), teacher_tokenizer, ctx.train_data)
    with pytest.raises(CorruptCheckpoint, match="spec asks for none"):
        vocabulary.prune_resumed(plain, student, state(kept_ids))
    assert vocabulary.prune_resumed(ctx, student, state(kept_ids)) is student
    assert student.model.get_input_embeddings().num_embeddings == len(kept_ids)


def test_benchmark_batch_gets_ids_the_student_has(text_job, tmp_path):
    from types import SimpleNamespace

    ctx = SimpleNamespace(job=load_job(text_job(tmp_path.as_uri(), student=PRUNE)),
                          state=SimpleNamespace(vocabulary=[0, 5, 100, 101, 102]),
                          inputs=SimpleNamespace(tokenizer=SimpleNamespace(unk_token_id=101)))
    mask = torch.ones(2, 3, dtype=torch.long)
    ids, same_mask = vocabulary.student_example(ctx, (torch.full((2, 3), 100), mask))
    assert ids.tolist() == [[2] * 3] * 2 and same_mask is mask  # 100 is kept: its new id
    ids, _ = vocabulary.student_example(ctx, (torch.tensor([[7, 5, 0]]), mask[:1]))
    assert ids.tolist() == [[3, 1, 0]]  # 7 was removed: the new [UNK]


def test_checkpoint_state_vocabulary_is_checked_when_parsed():
    raw = {"fingerprint": "f", "layers": [0, 1], "layer_scores": [], "epoch": 0, "step_in_epoch": 0,
           "global_step": 3}
    assert CheckpointState.parse(dict(raw)).vocabulary is None  # older checkpoints have none
    assert CheckpointState.parse({**raw, "vocabulary": [0, 5, 9]}).vocabulary == [0, 5, 9]
    for bad in ([5, 0], [0, 0, 1], [], ["0"], [-1, 2], "0,1"):
        with pytest.raises(CorruptCheckpoint, match="vocabulary"):
            CheckpointState.parse({**raw, "vocabulary": bad})


# ----------------------------------------------------------------------------- bad input


def test_causal_lm_with_vocabulary_is_a_clear_error(text_job, tmp_path):
    doc = text_job(tmp_path.as_uri(), student=PRUNE)
    doc["spec"]["teacher"]["task"] = "causal-lm"
    doc["spec"]["student"]["keepLayers"] = 2
    with pytest.raises(InputError, match=r"^student.vocabulary: .*not causal-lm"):
        run(load_job(doc), progress=Progress(show_bar=False))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("kind", "expected"), [
    ("WordLevel", "student.vocabulary: pruning supports WordPiece, BPE and Unigram (SentencePiece) tokenizers; "
                  "this tokenizer's model is WordLevel"),
    ("BPE", "student.vocabulary: the tokenizer's BPE model is neither byte-level nor has byte fallback or an "
            "unknown token, so text outside the kept tokens could not be tokenized"),
])  # fmt: skip
def test_a_tokenizer_pruning_cannot_serve_is_refused_before_the_teacher_pass(kind, expected, tiny_teacher, text_job,
                                                                              tmp_path, write_job_file):
    from tokenizers import Tokenizer, models, pre_tokenizers

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(tiny_teacher.path / name, teacher / name)
    vocab = {"[UNK]": 0, "[PAD]": 1, "a": 2, "b": 3, "ab": 4}
    if kind == "WordLevel":
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    else:  # whitespace-split BPE without an unknown token: a removed piece could not be spelled
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(teacher / "tokenizer.json"))
    (teacher / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "pad_token": "[PAD]"}))
    out = tmp_path / "out"
    doc = text_job(out.as_uri(), student=PRUNE, teacher={"uri": teacher.as_uri()})
    r = subprocess.run([sys.executable, "-m", "distillery.cli", "run", str(write_job_file(doc)), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert "teacher-outputs" not in r.stderr  # refused before the teacher pass
    assert not (out / "result.json").exists()


def test_remapped_ids_are_written_a_chunk_at_a_time_like_the_in_memory_map(tmp_path, monkeypatch):
    import numpy as np

    import distillery_trainer.vocabulary as vocabulary
    from distillery_trainer.encode import Encoded

    ids = torch.randint(0, 50, (10, 7))
    data = Encoded({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.arange(10))
    table = vocabulary.id_table([0, 3, 5, 7, 11, 49], 50, 0)
    in_memory = vocabulary.remap(data, table)
    monkeypatch.setattr(vocabulary, "REMAP_ROWS", 3)
    on_disk = vocabulary.remap(data, table, tmp_path / "remapped")
    assert torch.equal(on_disk.tensors["input_ids"], in_memory.tensors["input_ids"])
    assert on_disk.tensors["attention_mask"] is data.tensors["attention_mask"] and on_disk.labels is data.labels
    assert np.load(tmp_path / "remapped" / "input_ids.npy", mmap_mode="r").tolist() == in_memory.tensors["input_ids"].tolist()
