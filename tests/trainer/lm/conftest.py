"""Tiny random decoders (Llama, GPT-2) and a word-level tokenizer for the causal-LM unit tests.

The models are random and small (6 layers, hidden 32) so every test runs in seconds; the
directories hold config.json, model.safetensors and the tokenizer, like a real teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_VOCAB = 128
# Words of the tiny tokenizer after the specials; the rest of the vocabulary is filler words.
TINY_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "sport", "business", "tech", "politics",
              "match", "goal", "market", "shares", "phone", "vote", "topic", ":", ".", ",", "\n"]


def tiny_tokenizer():
    """A word-level fast tokenizer with <unk>, <s> (BOS, prepended) and </s> (EOS); vocab 128."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = TINY_WORDS + [f"w{i}" for i in range(TINY_VOCAB - len(specials) - len(TINY_WORDS))]
    vocab = {token: i for i, token in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_gpt2_config(**overrides):
    from transformers import GPT2Config

    settings = dict(vocab_size=TINY_VOCAB, n_embd=32, n_layer=6, n_head=4, n_positions=128,
                    bos_token_id=1, eos_token_id=2, pad_token_id=3)
    settings.update(overrides)
    return GPT2Config(**settings)


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def tiny_gpt2(seed: int = 0, **overrides):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(**overrides)).eval()


def save_decoder(model, directory: Path) -> Path:
    """Write `model` and the tiny tokenizer as a Hugging Face directory (safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def llama_dir(tmp_path) -> Path:
    """A tiny random Llama (6 layers, tied embeddings) with its tokenizer."""
    with torch.random.fork_rng():
        return save_decoder(tiny_llama(), tmp_path / "llama")


@pytest.fixture
def gpt2_dir(tmp_path) -> Path:
    """A tiny random GPT-2 (6 layers, tied embeddings) with its tokenizer."""
    with torch.random.fork_rng():
        return save_decoder(tiny_gpt2(), tmp_path / "gpt2")


@pytest.fixture(params=["llama", "gpt2"])
def decoder_dir(request, tmp_path) -> Path:
    """Each tiny decoder in turn."""
    build = tiny_llama if request.param == "llama" else tiny_gpt2
    with torch.random.fork_rng():
        return save_decoder(build(), tmp_path / request.param)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine extra threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
