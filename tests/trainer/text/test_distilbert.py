"""A DistilBERT teacher end to end (a popular teacher whose layout differs from BERT's: no token
types, `transformer.layer`, `q_lin`/`ffn.lin1` and `n_heads`/`hidden_dim`): layer extraction by
importance, width pruning, vocabulary pruning and int8 together in one run, healed, measured and
saved as a directory that `from_pretrained` loads and that matches the ONNX student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery.api.result import TrainerResult

from .conftest import (
    TinyTeacher,
    fine_tune_teacher,
    label_config,
    minilm_vocab_size,
    read_jsonl,
    run_all_cuts,
    saved_student_logits,
)


@pytest.fixture(scope="module")
def distilbert_teacher(bbc_data, tmp_path_factory) -> TinyTeacher:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=minilm_vocab_size(), dim=64, n_layers=4, n_heads=4, hidden_dim=128,
                              max_position_embeddings=128, **label_config(bbc_data))
    torch.manual_seed(0)
    return fine_tune_teacher(DistilBertForSequenceClassification(config), bbc_data, "tiny-distilbert",
                             tmp_path_factory)


@pytest.fixture(scope="module")
def composed_run(distilbert_teacher, text_job, tmp_path_factory) -> tuple[Path, TrainerResult]:
    out = tmp_path_factory.mktemp("distilbert")
    return out, run_all_cuts(text_job, distilbert_teacher.path, out, "tiny-distilbert-bbc")


def test_depth_width_vocabulary_and_int8_compose_on_a_distilbert_teacher(composed_run, distilbert_teacher):
    out, result = composed_run
    assert result.teacher.accuracy == pytest.approx(distilbert_teacher.eval_accuracy, abs=0.02)
    assert len(result.layers_kept) == 2 and set(result.layers_kept) <= set(range(4))
    w = result.width
    assert (w.heads, w.heads_kept, w.ffn, w.ffn_kept) == (4, 2, 128, 64)
    assert [entry.layer for entry in w.layers] == result.layers_kept
    v = result.vocabulary
    assert v is not None and v.kept_tokens < v.original_tokens == minilm_vocab_size()
    assert w.parameters_after < w.parameters_before < result.teacher.parameters
    assert result.student.parameters < result.teacher.parameters
    assert result.onnx_max_abs_diff < 1e-3
    assert result.student.accuracy > 0.4, result.student.accuracy  # healed: chance is 0.2
    assert {v.name for v in result.variants} == {"fp32", "int8"}
    assert (out / "model.int8.onnx").is_file()


def test_the_saved_distilbert_loads_with_from_pretrained_and_matches_the_onnx_student(composed_run, bbc_data):
    import onnx

    out, result = composed_run
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "distilbert" and config["n_layers"] == 2 and config["hidden_dim"] == 64
    texts = [row["text"] for row in read_jsonl(bbc_data.eval)[:8]]
    enc, from_hf, from_onnx, model = saved_student_logits(out, texts)
    kept = result.vocabulary.kept_tokens
    assert model.config.vocab_size == kept == model.get_input_embeddings().num_embeddings
    assert int(enc["input_ids"].max()) < kept  # the pruned tokenizer maps removed pieces to [UNK]
    inputs = {i.name for i in onnx.load(str(out / "model.onnx")).graph.input}
    assert inputs == {"input_ids", "attention_mask"}  # DistilBERT has no token types
    assert float((from_hf - from_onnx).abs().max()) < 1e-3
