"""Vocabulary pruning with BPE (byte-level, RoBERTa-style) and Unigram (SentencePiece: XLM-R and
DeBERTa-v3 style) tokenizers, which spell a removed token with kept pieces instead of mapping it
to [UNK].

Both tokenizers are trained here with the `tokenizers` library on the whole BBC News corpus (2225
articles; the test split uses 400 of them, cut to 600 characters), as a real teacher's tokenizer
is trained on far more text than one domain's train split uses. What must hold: the
train split splits exactly as before (the teacher's ids mapped old -> new), any other text still
tokenizes with kept ids only (byte-level BPE losslessly, without unknowns; Unigram with its unk_id
where no kept piece covers a character); and a RoBERTa, an XLM-R and a DeBERTa-v3 teacher distil
end to end with depth, width and vocabulary pruned, the saved directory loading with
`from_pretrained` and making, from raw text, the very predictions the run measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery.api.result import TrainerResult
from distillery_trainer import vocabulary

from .conftest import (
    MAX_LENGTH,
    TinyTeacher,
    bbc_corpus_texts,
    fine_tune_teacher,
    label_config,
    read_jsonl,
    run_all_cuts,
    saved_student_logits,
)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
VOCAB_SIZE = 8000
# Words and characters BBC news rarely has: they need pieces the train split never used.
RARE_TEXTS = ["Xylophonists serenaded unbelievably quarrelsome axolotls; the flamingos' choreography dazzled.",
              "Naïve café owners in Zürich said: «ça va» — 😀 Жизнь!"]
# Teachers by model type: their tokenizer model and the tokenizer class real checkpoints name.
TEACHERS = {"roberta": ("bpe", "RobertaTokenizer"), "xlm-roberta": ("unigram", "XLMRobertaTokenizer"),
            "deberta-v2": ("unigram", "DebertaV2Tokenizer")}
# Model-specific settings of the tiny teachers (DeBERTa-v3's relative attention, shared keys).
TEACHER_CONFIG = {"deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 32,
                                 "max_relative_positions": MAX_LENGTH, "norm_rel_ebd": "layer_norm",
                                 "share_att_key": True, "type_vocab_size": 0}}


def texts_of(path: Path) -> list[str]:
    return [row["text"] for row in read_jsonl(path)]


def train_tokenizer(kind: str, texts: list[str], out: Path, tokenizer_class: str) -> Path:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
                                                               unk_token="<unk>"))
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    fast.save_pretrained(str(out))
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))
    return out


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer_dir(request, tmp_path_factory) -> Path:
    return train_tokenizer(request.param, bbc_corpus_texts(), tmp_path_factory.mktemp(f"{request.param}-tokenizer"),
                           "PreTrainedTokenizerFast")


def kind_of(tokenizer_dir: Path) -> str:
    return tokenizer_dir.name.split("-")[0]


def load(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def pruned_for_train(tokenizer, bbc_data) -> tuple[list[int], object]:
    """The kept ids for the whole train texts (as a run with minCount 1 picks them, but without
    truncation, whose cut word a run's re-encoding may split differently) and the pruned
    tokenizer, as `tokenizers` loads it."""
    from tokenizers import Tokenizer

    doc = vocabulary.tokenizer_document(tokenizer)
    used = {i for text in texts_of(bbc_data.train) for i in tokenizer(text)["input_ids"]}
    kept = vocabulary.complete_kept(doc, sorted(used | set(tokenizer.all_special_ids)))
    return kept, Tokenizer.from_str(json.dumps(vocabulary.pruned_tokenizer_json(doc, kept)))


# ----------------------------------------------------------------------------- the tokenizer


def test_train_text_splits_as_before_and_other_text_with_kept_pieces(tokenizer_dir, bbc_data):
    teacher = load(tokenizer_dir)
    kept, pruned = pruned_for_train(teacher, bbc_data)
    position = {old: new for new, old in enumerate(kept)}
    assert len(kept) < teacher.backend_tokenizer.get_vocab_size() * 0.9  # the split uses a share of it
    assert pruned.get_vocab_size() == len(kept)

    for text in texts_of(bbc_data.train):  # the kept ids are what the teacher's were, renumbered
        assert pruned.encode(text).ids == [position[i] for i in teacher(text)["input_ids"]]

    longer, unknown_new, unknown_old = 0, 0, 0
    unk_old, unk_new = teacher.unk_token_id, position[teacher.unk_token_id]
    for text in texts_of(bbc_data.eval) + RARE_TEXTS:
        original, mine = teacher(text)["input_ids"], pruned.encode(text).ids
        assert max(mine) < len(kept)
        assert len(mine) >= len(original)
        longer += len(mine) > len(original)
        unknown_old += original.count(unk_old)
        unknown_new += mine.count(unk_new)
        if kind_of(tokenizer_dir) == "bpe":  # bytes spell anything: the text comes back whole
            assert pruned.decode(mine) == teacher.decode(original, skip_special_tokens=True)
    assert longer > 10, "the eval texts must use pieces the train split does not"
    if kind_of(tokenizer_dir) == "bpe":
        assert unknown_new == 0
    else:  # characters no kept piece covers become <unk>: the rare texts' Cyrillic and emoji at least
        assert unknown_new > unknown_old


def test_bpe_keeps_what_kept_tokens_are_merged_from(bbc_data, tmp_path):
    tokenizer = load(train_tokenizer("bpe", texts_of(bbc_data.train), tmp_path / "bpe", "RobertaTokenizer"))
    doc = vocabulary.tokenizer_document(tokenizer)
    model = doc["model"]
    vocab = model["vocab"]
    word = vocab["Ġgovernment"] if "Ġgovernment" in vocab else vocab["Ġthe"]
    kept = vocabulary.complete_kept(doc, sorted({word, *tokenizer.all_special_ids}))
    names = {i for token, i in vocab.items() if i in set(kept)}
    kept_tokens = {token for token, i in vocab.items() if i in names}
    assert len([t for t in kept_tokens if len(t) == 1]) == 256  # the byte alphabet
    for a, b in vocabulary.merge_pairs(model):  # closed: each kept token's merges keep both parts
        if a + b in kept_tokens:
            assert a in kept_tokens and b in kept_tokens
    pruned = vocabulary.pruned_tokenizer_json(doc, kept)
    assert len(pruned["model"]["merges"]) < len(model["merges"])
    assert all(a in kept_tokens and b in kept_tokens for a, b in vocabulary.merge_pairs(pruned["model"]))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module", params=list(TEACHERS))
def resplit_teacher(request, bbc_data, tmp_path_factory) -> TinyTeacher:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_type = request.param
    kind, tokenizer_class = TEACHERS[model_type]
    tokenizer_dir = train_tokenizer(kind, bbc_corpus_texts(), tmp_path_factory.mktemp(f"{kind}-tokenizer"),
                                    tokenizer_class)
    settings = {"type_vocab_size": 1, "max_position_embeddings": MAX_LENGTH + 4, **TEACHER_CONFIG.get(model_type, {})}
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, intermediate_size=128, pad_token_id=1, bos_token_id=0,
                                  eos_token_id=2, **settings, **label_config(bbc_data))
    torch.manual_seed(0)
    return fine_tune_teacher(AutoModelForSequenceClassification.from_config(config), bbc_data,
                             f"tiny-{model_type}", tmp_path_factory, tokenizer_dir)


@pytest.fixture(scope="module")
def resplit_run(resplit_teacher, text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    out = tmp_path_factory.mktemp("resplit-run")
    return out, run_all_cuts(text_job, resplit_teacher.path, out, "tiny-resplit-bbc")


def test_a_pruned_vocabulary_distils_end_to_end(resplit_run, resplit_teacher):
    out, result = resplit_run
    v = result.vocabulary
    assert v.segmentation == "resplit" and v.original_tokens == VOCAB_SIZE and v.kept_tokens < VOCAB_SIZE
    # every row is longer than MAX_LENGTH tokens in both tokenizations: the counts are the cut's
    assert v.train_tokens_student == v.train_tokens and v.eval_tokens_student == v.eval_tokens
    if resplit_teacher.path.name == "tiny-roberta":  # byte-level BPE spells anything
        assert v.eval_tokens_unknown == 0
    assert (result.width.heads_kept, result.width.ffn_kept) == (2, 64)
    assert result.teacher.accuracy == pytest.approx(resplit_teacher.eval_accuracy, abs=0.02)
    assert result.student.accuracy > 0.4, result.student.accuracy  # healed: chance is 0.2
    assert result.onnx_max_abs_diff < 1e-3
    card = (out / "README.md").read_text()
    assert "spells a removed one with kept pieces" in card
    assert json.loads((out / "result.json").read_text())["vocabulary"]["segmentation"] == "resplit"


def test_the_saved_student_from_raw_text_gives_the_measured_accuracy(resplit_run, bbc_data):
    """The run measured the student on the eval split encoded by the pruned tokenizer: the saved
    directory and the ONNX file, fed by the saved tokenizer from raw text, make the same predictions."""
    import torch

    out, result = resplit_run
    rows = read_jsonl(bbc_data.eval)
    enc, from_hf, from_onnx, model = saved_student_logits(out, [r["text"] for r in rows])
    tokenizer = load(out / "model")
    assert model.config.vocab_size == result.vocabulary.kept_tokens == len(tokenizer)
    labels = torch.tensor([model.config.label2id[r["label"]] for r in rows])
    assert int(enc["input_ids"].max()) < result.vocabulary.kept_tokens
    assert float((from_hf - from_onnx).abs().max()) < 1e-3
    measured = result.metrics_of("fp32").accuracy
    assert int((from_hf.argmax(1) == labels).sum()) == round(measured * len(rows))
    # and the rare texts, with pieces no train row used, still tokenize into ids the student has
    rare = tokenizer(RARE_TEXTS, padding=True, return_tensors="pt")
    assert int(rare["input_ids"].max()) < result.vocabulary.kept_tokens
