"""The decoder wrapper: safe loading, layer cuts that keep generate() and the cache working,
tied embeddings, saving, and an ONNX prefill graph that matches torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from distillery_trainer.errors import InputError
from distillery_trainer.lm.model import CausalLMNet
from tests.trainer.lm.conftest import save_decoder, tiny_llama

KEEP = [0, 2, 5]


def test_load_reports_the_decoder_facts(decoder_dir):
    net = CausalLMNet.load(decoder_dir)
    assert net.num_layers() == 6
    assert net.vocab_size() == 128
    assert net.max_positions() == 128
    assert net.ties_embeddings()
    assert net.class_count() is None
    batch = {"input_ids": torch.randint(0, 128, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    with torch.no_grad():
        out = net.outputs(batch, hidden_states=True)
    assert out.logits.shape == (2, 9, 128)
    assert out.pooled.shape == (2, 32)
    assert len(out.hidden_states) == 7


def test_hidden_states_are_raw_block_outputs(llama_dir):
    """The last boundary is the last block's output, not the final-norm output transformers reports."""
    net = CausalLMNet.load(llama_dir)
    batch = {"input_ids": torch.randint(0, 128, (1, 6)), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        hs = net.outputs(batch, hidden_states=True).hidden_states
        normed = net.model.model.norm(hs[-1])
        reported = net.model(**batch, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(normed, reported, atol=1e-6)
    assert not torch.allclose(hs[-1], reported, atol=1e-3)


def test_cut_student_saves_loads_and_generates_with_the_cache(decoder_dir, tmp_path):
    net = CausalLMNet.load(decoder_dir)
    student = net.with_layers(KEEP)
    assert student.model.config.num_hidden_layers == 3
    assert [layer_idx_of(layer) for layer in student.layer_list()] == [0, 1, 2]
    assert student.ties_embeddings()
    assert net.num_layers() == 6  # the source is untouched
    student.save(tmp_path / "student")
    assert (tmp_path / "student" / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config.get("num_hidden_layers", config.get("n_layer")) == 3

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "student")).eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    prompt = torch.tensor([[1, 5, 9, 14, 20]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=prompt).logits, student.model(input_ids=prompt).logits, atol=1e-5)
        cached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=3)
        uncached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=3)
    assert cached.shape == (1, 10)
    assert torch.equal(cached, uncached)


def test_only_layers_restores_config_and_numbering(decoder_dir):
    net = CausalLMNet.load(decoder_dir)
    batch = {"input_ids": torch.randint(0, 128, (1, 7)), "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    with torch.no_grad():
        before = net.outputs(batch).logits
        with net.only_layers(KEEP):
            assert net.model.config.num_hidden_layers == 3
            assert [layer_idx_of(layer) for layer in net.layer_list()] == [0, 1, 2]
            cut = net.outputs(batch).logits
        after = net.outputs(batch).logits
    assert net.model.config.num_hidden_layers == 6
    assert [layer_idx_of(layer) for layer in net.layer_list()] == list(range(6))
    assert torch.equal(before, after)
    assert not torch.allclose(before, cut)


def test_per_layer_config_lists_follow_the_cut(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, use_sliding_window=True, sliding_window=8, max_window_layers=3)
    net = CausalLMNet.load(save_decoder(Qwen2ForCausalLM(config), tmp_path / "qwen2"))
    types = list(net.model.config.layer_types)
    student = net.with_layers([0, 4, 5])
    assert student.model.config.layer_types == [types[0], types[4], types[5]]
    with net.only_layers([1, 2]):
        assert net.model.config.layer_types == [types[1], types[2]]
    assert net.model.config.layer_types == types
    student.save(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "student")).eval()
    prompt = torch.tensor([[1, 5, 9, 14, 20, 3, 7, 8, 11, 12]])
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=3)
        uncached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=3)
    assert torch.equal(cached, uncached)


def test_onnx_prefill_matches_torch_on_other_shapes(decoder_dir, tmp_path):
    import onnxruntime as ort

    module = CausalLMNet.load(decoder_dir).with_layers(KEEP).export_module().eval()
    ids = torch.randint(0, 128, (2, 1))  # a one-token example: nothing may freeze at that length
    path = tmp_path / "model.onnx"
    torch.onnx.export(module, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "logits")})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape, padding in [((3, 13), 0), ((1, 4), 0), ((2, 9), 3)]:
        ids = torch.randint(0, 128, shape)
        mask = torch.ones_like(ids)
        mask[0, :padding] = 0  # left padding: the traced graph must still apply the mask
        with torch.no_grad():
            expected = module(ids, mask).numpy()
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected)[:, padding:].max() < 1e-4


def layer_idx_of(layer) -> int:
    return next(m.layer_idx for m in layer.modules() if hasattr(m, "layer_idx"))


def test_refuses_unsafe_or_unknown_directories(tmp_path, llama_dir):
    with pytest.raises(InputError, match="no config.json"):
        CausalLMNet.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputError, match="safetensors"):
        CausalLMNet.load(tmp_path)
    config = json.loads((llama_dir / "config.json").read_text())
    for change, message in [({"auto_map": {"AutoModelForCausalLM": "x.Y"}}, "remote code"),
                            ({"model_type": "bert"}, "not a supported decoder")]:
        (llama_dir / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(InputError, match=message) as err:
            CausalLMNet.load(llama_dir)
        assert "x.Y" not in str(err.value) and "bert" not in str(err.value)


def test_broken_weights_are_an_input_error(tmp_path):
    directory = save_decoder(tiny_llama(), tmp_path / "llama")
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot load the decoder"):
        CausalLMNet.load(directory)


def test_onnx_graph_with_cache_decodes_like_torch(decoder_dir, tmp_path):
    """Exported on a decode step, the cached graph must also do the prefill (past of length 0)
    and every later step, matching a full torch forward at each position."""
    import onnxruntime as ort

    from distillery_trainer.lm.model import cache_io_names

    student = CausalLMNet.load(decoder_dir).with_layers(KEEP)
    past_names, present_names = cache_io_names(3)
    past = [torch.randn(student.cache_shape(2, 5)) for _ in past_names]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    path = tmp_path / "cached.onnx"
    torch.onnx.export(student.export_module_with_cache().eval(),
                      (torch.randint(0, 128, (2, 1)), torch.ones(2, 6, dtype=torch.long), *past), str(path),
                      dynamo=False, opset_version=17, input_names=["input_ids", "attention_mask", *past_names],
                      output_names=["logits", *present_names], dynamic_axes=axes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    sequence = torch.randint(4, 128, (1, 10))
    with torch.no_grad():
        expected = student.model(input_ids=sequence).logits[0].numpy()
    cache = [np.zeros(student.cache_shape(1, 0), dtype=np.float32) for _ in past_names]
    got, seen = [], 0
    for chunk in (sequence[:, :6], *sequence[:, 6:].split(1, dim=1)):  # prefill, then one token at a time
        seen += chunk.shape[1]
        logits, *cache = session.run(None, {"input_ids": chunk.numpy(), "attention_mask": np.ones((1, seen), np.int64),
                                            **dict(zip(past_names, cache, strict=True))})
        got.append(logits[0])
    assert np.abs(np.concatenate(got) - expected).max() < 1e-4


@pytest.mark.parametrize("kind", ["mistral", "qwen3"])
def test_other_supported_layouts_cut_and_generate(kind, tmp_path):
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM as Auto

    config = AutoConfig.for_model(kind, vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    student = CausalLMNet.load(save_decoder(Auto.from_config(config), tmp_path / kind)).with_layers([1, 4])
    student.save(tmp_path / "student")
    reloaded = Auto.from_pretrained(str(tmp_path / "student")).eval()
    assert reloaded.config.num_hidden_layers == 2
    prompt = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=3)
        uncached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=3)
    assert torch.equal(cached, uncached)
