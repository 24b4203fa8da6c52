"""End to end on a decoder: a tiny Llama trained on BBC text, cut from 6 to 4 layers, healed by KD
on its next-token distributions, measured, exported and judged, as `distillery run` does it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.api import load_job
from distillery.api.job import Hardware
from distillery.api.result import TrainerResult
from distillery_trainer.lm.onnx_decoder import DecoderSession
from distillery_trainer.pipeline import run
from tests.tiny_decoder import read_texts, write_tiny_llama
from tests.trainer.text.conftest import bbc_data  # noqa: F401 - session fixture: BBC train/eval JSONL

BLOCK = 32


@pytest.fixture(scope="module")
def trained_decoder(bbc_data, tmp_path_factory) -> Path:  # noqa: F811
    with torch.random.fork_rng():
        return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "teacher", read_texts(bbc_data.train))


def decoder_job(teacher: Path, data, out: Path, **spec) -> dict:
    doc = {
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "decoder"},
        "spec": {
            "teacher": {"uri": str(teacher), "task": "causal-lm"},
            "dataset": {"trainUri": str(data.train), "evalUri": str(data.eval), "maxSequenceLength": BLOCK,
                        "maxTrainRows": 120, "maxEvalRows": 40, "maxPromptRows": 20},
            "student": {"method": "importance", "importanceMetric": "block-influence", "keepLayers": 4},
            "distillation": {"epochs": 2, "batchSize": 8, "learningRate": 3e-3, "temperature": 1.0, "alpha": 0.5,
                             "topK": 16},
            "benchmark": {"batchSize": 2, "sequenceLength": 16, "decodeTokens": 8, "warmup": 1, "iterations": 3,
                          "threads": 1},
            "export": {"int8": True},
            "targets": {"maxPerplexityIncrease": 10.0},
            "output": {"uri": out.as_uri()},
        },
    }
    for section, values in spec.items():
        doc["spec"][section] = {**doc["spec"].get(section, {}), **values}
    return doc


@pytest.fixture(scope="module")
def healed(trained_decoder, bbc_data, tmp_path_factory) -> tuple[Path, TrainerResult]:  # noqa: F811
    out = tmp_path_factory.mktemp("healed")
    return out, run(load_job(decoder_job(trained_decoder, bbc_data, out)))


@pytest.fixture(scope="module")
def unhealed(trained_decoder, bbc_data, tmp_path_factory) -> TrainerResult:  # noqa: F811
    out = tmp_path_factory.mktemp("unhealed")
    return run(load_job(decoder_job(trained_decoder, bbc_data, out, distillation={"epochs": 0})))


def test_healing_lowers_the_cut_models_perplexity(healed, unhealed):
    _, result = healed
    assert result.student.metric_name == "next-token-accuracy"
    assert result.layers_kept == unhealed.layers_kept and len(result.layers_kept) == 4
    assert result.teacher.perplexity == unhealed.teacher.perplexity  # one teacher, one eval text
    assert 1.0 < result.teacher.perplexity < unhealed.student.perplexity
    assert result.student.perplexity < unhealed.student.perplexity, (result.student, unhealed.student)


def test_every_decoder_metric_is_measured(healed):
    _, result = healed
    for model in [variant.metrics for variant in result.variants] + [result.teacher]:
        assert model.latency_name == "decode-ms-per-token" and model.latency_p50_ms > 0
        assert model.prefill_tokens_per_second > 0 and 0 <= model.zero_shot_accuracy <= 1
        assert 0 < model.accuracy < 1 and model.size_bytes > 0 and model.memory_bytes > 0
    # int8 is kept only where it decodes faster than fp32, and is then judged like it.
    by_name = {variant.name: variant for variant in result.variants}
    if "int8" in by_name:
        assert by_name["int8"].metrics.latency_p50_ms < by_name["fp32"].metrics.latency_p50_ms
        assert by_name["int8"].speedup is not None
    assert result.teacher.num_layers == 6 and result.student.num_layers == 4
    assert result.student.parameters < result.teacher.parameters
    assert result.speedup == pytest.approx(result.teacher.latency_p50_ms / result.student.latency_p50_ms, rel=1e-3)
    # The ends are kept by default, and every layer was scored.
    assert result.layers_kept[0] == 0 and result.layers_kept[-1] == 5 and len(result.layer_scores) == 6
    increase = (result.student.perplexity - result.teacher.perplexity) / result.teacher.perplexity
    assert result.decision.accepted is (increase <= 10.0)
    assert result.onnx_max_abs_diff < 1e-3


def test_the_student_is_a_standard_hugging_face_decoder(healed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = healed
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 4 and type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    prompt = tokenizer("the government said", return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        plain = model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] == prompt["input_ids"].shape[1] + 6 and torch.equal(cached, plain)
    # The ONNX graph decodes with its KV cache to the same tokens as generate().
    decoder = DecoderSession(out / "model.onnx", Hardware.CPU, 1)
    ids = prompt["input_ids"]
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                                  do_sample=False)
    assert np.array_equal(decoder.greedy_decode(ids.numpy(), steps=5), expected[:, ids.shape[1]:].numpy())
    card = (out / "README.md").read_text()
    assert "perplexity" in card and "decode ms/token" in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["perplexity"] == result.student.perplexity


def test_online_teacher_equals_the_cache_when_it_holds_the_whole_vocabulary(trained_decoder, bbc_data, tmp_path):  # noqa: F811
    """With topK at the vocabulary size the cached targets are the full distributions, so the
    online run (teacher beside the student) must train the same student, step for step."""
    one_epoch = {"epochs": 1, "topK": 4096}
    cached = run(load_job(decoder_job(trained_decoder, bbc_data, tmp_path / "cached", distillation=one_epoch,
                                      export={"int8": False})))
    online = run(load_job(decoder_job(trained_decoder, bbc_data, tmp_path / "online",
                                      distillation={**one_epoch, "teacherLogits": "online"}, export={"int8": False})))
    assert online.training.history[0]["loss"] == pytest.approx(cached.training.history[0]["loss"], rel=1e-3)
    assert online.student.perplexity == pytest.approx(cached.student.perplexity, rel=1e-3)
    assert not any((tmp_path / "online" / "cache").glob("*.safetensors"))  # nothing cached online


def test_a_rerun_resumes_the_tied_student_from_its_checkpoint(healed, trained_decoder, bbc_data, tmp_path):  # noqa: F811
    """The checkpoint stores tied embeddings once; resuming must tie them again and skip training."""
    import shutil

    out, result = healed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "result.json").unlink()
    again = run(load_job(decoder_job(trained_decoder, bbc_data, copy)))
    assert again.training.resumed_from_step == result.training.steps
    # The fp32 variant is compared: which variant is chosen depends on measured latency (int8 is
    # kept only where it decodes faster), which a loaded machine may decide either way.
    before, after = ({v.name: v.metrics for v in r.variants}["fp32"] for r in (result, again))
    assert after.perplexity == pytest.approx(before.perplexity, rel=1e-6)
