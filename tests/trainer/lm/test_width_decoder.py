"""Width pruning of Llama-family decoders (Minitron's setting): attention heads by whole key/value
group and SwiGLU neurons, on tiny random Llama, Qwen2 (biased projections), Qwen3 (per-head norms)
and Mistral models; the pruned decoder is a smaller standard model (the config records the kept
counts), generates with its cache, and exports to the KV-cache ONNX graph; then a whole run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distillery.api import load_job
from distillery.api.job import Hardware
from distillery_trainer import width
from distillery_trainer.lm.model import CausalLMNet
from distillery_trainer.lm.onnx_decoder import DecoderSession, export_decoder
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress
from distillery_trainer.width_layouts import get_module
from tests.trainer.lm.conftest import save_decoder
from tests.trainer.lm.test_run import decoder_job, trained_decoder  # noqa: F401 - module fixture
from tests.trainer.text.conftest import bbc_data  # noqa: F401 - session fixture: BBC train/eval JSONL

HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 4, 2, 8, 64, 2
KINDS = ["llama", "qwen2", "qwen3", "mistral"]


def tiny_decoder(kind: str, tmp_path, seed: int = 0) -> CausalLMNet:
    config = AutoConfig.for_model(kind, vocab_size=128, hidden_size=32, intermediate_size=FFN,
                                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                  head_dim=HEAD_DIM, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return CausalLMNet.load(save_decoder(AutoModelForCausalLM.from_config(config), tmp_path / kind))


def batch(rows: int = 3, tokens: int = 12, seed: int = 1) -> dict:
    ids = torch.randint(4, 128, (rows, tokens), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def masked_copy(net: CausalLMNet, plan: width.WidthPlan) -> CausalLMNet:
    """The reference: the same model with the removed heads' output columns and the removed
    neurons' down-projection columns zeroed (exactly what removing them takes away)."""
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for layer, heads, neurons in zip(ref.layer_list(), plan.heads, plan.ffn, strict=True):
            for h in set(range(HEADS)) - set(heads):
                layer.self_attn.o_proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
            layer.mlp.down_proj.weight[:, sorted(set(range(FFN)) - set(neurons))] = 0
    return ref


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_a_pruned_decoder_is_a_smaller_standard_model_with_the_kept_units_outputs(kind, tmp_path):
    net = tiny_decoder(kind, tmp_path)
    importance = width.measure_importance(net, [batch()])
    plan = width.plan_for(importance, 2, 16, group=HEADS // KV_HEADS)
    reference = masked_copy(net, plan)
    before = net.parameter_count()
    sizes = width.unit_sizes(net)

    width.apply_plan(net, plan)

    for keep in plan.heads:  # one whole key/value group: heads 0-1 or 2-3
        assert keep in ([0, 1], [2, 3])
    config = net.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size) == \
        (2, 1, HEAD_DIM, 16)
    layer = net.layer_list()[0]
    assert layer.self_attn.q_proj.weight.shape == (2 * HEAD_DIM, 32)
    assert layer.self_attn.k_proj.weight.shape == layer.self_attn.v_proj.weight.shape == (HEAD_DIM, 32)
    assert layer.mlp.gate_proj.weight.shape == layer.mlp.up_proj.weight.shape == (16, 32)
    assert net.parameter_count() == sizes.parameters(before, 2, 16) < before
    b = batch(seed=2)
    assert torch.allclose(net.outputs(b).logits, reference.outputs(b).logits, atol=1e-5)

    net.save(tmp_path / "student")  # no zero heads: the config describes the smaller model
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"], saved["head_dim"]) == (2, 1, HEAD_DIM)
    assert width.KEPT_HEADS_KEY not in saved
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "student")).eval()
    assert sum(p.numel() for p in loaded.parameters()) == net.parameter_count()
    assert torch.allclose(loaded(**b).logits, net.outputs(b).logits, atol=1e-5)
    prompt = torch.tensor([[1, 5, 9, 14]])
    cached = loaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=3)
    assert torch.equal(cached, loaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False,
                                               pad_token_id=3))


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_a_pruned_decoder_exports_to_the_kv_cache_graph(kind, tmp_path):
    net = tiny_decoder(kind, tmp_path)
    width.apply_plan(net, width.plan_for(width.measure_importance(net, [batch()]), 2, 16, group=2))
    decoder = DecoderSession(export_decoder(net, tmp_path / "model.onnx", 17), Hardware.CPU, 1)
    b = batch(rows=1, tokens=10, seed=4)
    with torch.no_grad():
        expected = net.outputs(b).logits
    got = decoder.logits(b["input_ids"].numpy(), b["attention_mask"].numpy())
    assert float((torch.from_numpy(got).float() - expected).abs().max()) < 1e-4


def test_kept_heads_must_be_whole_groups_and_ratios_apply_to_groups(tmp_path):
    net = tiny_decoder("llama", tmp_path)
    with pytest.raises(ValueError, match="whole groups of 2"):
        width.apply_plan(net, width.WidthPlan([[0, 2], [0, 2]], None))
    spec = type("W", (), {"heads": 0.5, "ffn": 0.25, "max_parameters": None})()
    assert width.kept_counts(spec, net) == (2, 16)  # one of two groups, 16 of 64 neurons
    job = load_job({"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "w"},
                    "spec": {"teacher": {"uri": "file:///t", "task": "causal-lm"},
                             "dataset": {"trainUri": "file:///a.jsonl", "evalUri": "file:///b.jsonl"},
                             "student": {"keepLayers": 2, "width": {"heads": 0.2}}, "output": {"uri": "file:///o"}}})
    config = {"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 64}
    with pytest.raises(width.InputError, match=r"^student\.width\.heads: 0\.2 of 2 key/value head groups keeps none"):
        width.check_source_config(job, config, "teacher.uri")


def test_a_parameter_budget_keeps_whole_groups(tmp_path):
    net = tiny_decoder("llama", tmp_path)
    total, sizes = net.parameter_count(), width.unit_sizes(net)
    assert (sizes.heads, sizes.group, sizes.ffn) == (HEADS, 2, FFN)
    exact = sizes.parameters(total, 2, 32)
    assert width.counts_for_budget(total, sizes, exact) == (2, 32)
    width.apply_plan(net, width.plan_for(width.measure_importance(net, [batch()]), 2, 32, group=2))
    assert net.parameter_count() == exact


# ----------------------------------------------------------------------------- a run


def test_a_decoder_run_prunes_heads_and_neurons_heals_and_exports(trained_decoder, bbc_data, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    doc = decoder_job(trained_decoder, bbc_data, out, student={"width": {"heads": 0.5, "ffn": 0.5}})
    result = run(load_job(doc), progress=Progress(show_bar=False))
    w = result.width
    assert (w.heads, w.heads_kept, w.ffn, w.ffn_kept) == (4, 2, 128, 64)
    assert all(entry.heads_kept in ([0, 1], [2, 3]) for entry in w.layers)
    assert result.student.parameters == w.parameters_after < w.parameters_before
    assert result.onnx_max_abs_diff < 1e-3  # the KV-cache graph of the pruned decoder matches torch
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (2, 1, 64)
    loaded = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert sum(p.numel() for p in loaded.parameters()) == result.student.parameters
    assert result.student.perplexity < 1000 and get_module(loaded.model.layers[0], "mlp.gate_proj").out_features == 64
