"""The decoder wrapper: safe loading, layer cuts that keep generate() and the cache working,
tied embeddings and saving (the ONNX graph: test_onnx_decoder.py)."""

from __future__ import annotations

import json

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
