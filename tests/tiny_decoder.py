"""A tiny decoder teacher for the causal-LM run tests (local and in the cluster): a word-level
tokenizer built from the data's own words and a small Llama, briefly trained on that text so its
next-token distributions carry something for a student to learn (a random teacher would not)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

VOCAB = 400
BLOCK = 32


def read_texts(path: Path, field: str = "text") -> list[str]:
    return [json.loads(line)[field] for line in path.read_text().splitlines() if line.strip()]


def word_tokenizer(texts: list[str], vocab_size: int = VOCAB):
    """A lower-case word-level fast tokenizer over the most frequent words (the rest are <unk>)."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    specials = ["<unk>", "<s>", "</s>"]
    words = [w for w, _ in counts.most_common(vocab_size - len(specials))]
    vocab = {token: i for i, token in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def write_tiny_llama(directory: Path, texts: list[str], *, layers: int = 6, steps: int = 150, seed: int = 0) -> Path:
    """A 6-layer Llama (hidden 64, tied embeddings) trained for `steps` steps on `texts`; saved
    with its tokenizer as a Hugging Face directory (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    ids = torch.tensor([i for t in texts for i in (tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])])
    blocks = ids[: len(ids) // BLOCK * BLOCK].view(-1, BLOCK)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(0, len(blocks), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory
