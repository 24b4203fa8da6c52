"""Packing documents into blocks, and labelled rows into zero-shot prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery_trainer.errors import InputError
from distillery_trainer.lm.text_blocks import pack_blocks, spread_rows, zero_shot_set


def test_pack_blocks_concatenates_documents_with_bos_and_eos(tokenizer):
    texts = ["the cat sat", "a dog", "on the mat ."]
    packed = pack_blocks([texts], tokenizer, block_length=4)
    # <s> the cat sat </s> <s> a dog </s> <s> on the mat . </s> = 15 tokens -> 3 blocks of 4.
    vocab = tokenizer.get_vocab()
    expected = [vocab[t] for t in ["<s>", "the", "cat", "sat", "</s>", "<s>", "a", "dog", "</s>", "<s>", "on", "the", "mat", ".", "</s>"]]
    assert packed.tensors["input_ids"].shape == (3, 4)
    assert packed.tensors["input_ids"].dtype == torch.long
    assert packed.tensors["input_ids"].flatten().tolist() == expected[:12]
    assert torch.equal(packed.tensors["attention_mask"], torch.ones(3, 4, dtype=torch.long))
    assert packed.labels is None


def test_chunks_packed_on_disk_give_the_blocks_of_one_pass_in_memory(tokenizer, tmp_path):
    """A run packs a chunk of documents at a time into a file: the same blocks (and so the same
    cache digests) as packing every document at once, read through a memory map."""
    texts = [" ".join(["the cat sat on the mat ."] * (i % 4 + 1)) for i in range(23)]
    whole = pack_blocks([texts], tokenizer, block_length=8)
    chunked = pack_blocks((texts[i:i + 5] for i in range(0, len(texts), 5)), tokenizer, block_length=8,
                          into=tmp_path / "blocks")
    assert torch.equal(chunked.tensors["input_ids"], whole.tensors["input_ids"])
    assert torch.equal(chunked.tensors["attention_mask"], whole.tensors["attention_mask"])
    tokens = tmp_path / "blocks" / "tokens.int64"
    with tokens.open("r+b") as fh:  # the blocks are the file's pages: a write to it shows in them
        fh.write(np.int64(99).tobytes())
    assert int(chunked.tensors["input_ids"][0, 0]) == 99
    assert chunked.tensors["attention_mask"].stride() == (0, 1)  # a broadcast view: no memory per row
    batch = chunked.batch(torch.tensor([4, 1]))
    assert torch.equal(batch["input_ids"], whole.tensors["input_ids"][[4, 1]])
    assert tokens.stat().st_size == 8 * sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts)


def test_pack_blocks_drops_the_ragged_tail(tokenizer):
    packed = pack_blocks([["the cat sat", "a dog"]], tokenizer, block_length=4)  # 9 tokens
    assert packed.tensors["input_ids"].shape == (2, 4)


def test_pack_blocks_without_bos_separates_documents_by_eos():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    core = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "x": 1, "y": 2, "[UNK]": 3}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = GPT2TokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    packed = pack_blocks([["x y", "y", "x"]], tok, block_length=3)
    assert packed.tensors["input_ids"].flatten().tolist() == [1, 2, 0, 2, 0, 1]


def test_pack_blocks_too_little_text_is_an_input_error(tokenizer):
    with pytest.raises(InputError, match=r"dataset.trainUri: the text gives 4 tokens, fewer than one block of 8"):
        pack_blocks([["the cat"]], tokenizer, block_length=8)
    with pytest.raises(InputError, match="dataset.evalUri"):
        pack_blocks([[]], tokenizer, block_length=8, field="dataset.evalUri")


def test_spread_rows_covers_the_whole_split():
    assert spread_rows(5, 10) == [0, 1, 2, 3, 4]
    assert spread_rows(100, 3) == [0, 50, 99]


def test_zero_shot_set_builds_prompts_and_label_continuations(tokenizer):
    texts = ["the cat sat", "a dog", "the match goal", "shares market"]
    labels = np.array([0, 0, 1, 2])
    names = ["sport", "business", "tech"]
    examples = zero_shot_set(texts, labels, names, tokenizer, "{text} topic:", max_rows=10, max_prompt_tokens=64)
    vocab = tokenizer.get_vocab()
    assert examples.label_ids == [[vocab["sport"]], [vocab["business"]], [vocab["tech"]]]
    assert examples.gold == [0, 0, 1, 2]
    assert examples.prompt_ids[1] == [vocab[t] for t in ["<s>", "a", "dog", "topic", ":"]]


def test_zero_shot_set_truncates_the_text_to_fit(tokenizer):
    long_text = " ".join(["the cat sat on the mat ."] * 20)
    examples = zero_shot_set([long_text], np.array([0]), ["sport"], tokenizer, "{text} topic:",
                             max_rows=5, max_prompt_tokens=12)
    vocab = tokenizer.get_vocab()
    prompt = examples.prompt_ids[0]
    assert len(prompt) + 1 <= 12  # the prompt leaves room for the label's token
    assert len(prompt) == 11
    assert prompt[-2:] == [vocab["topic"], vocab[":"]]  # the template's tail survives the cut
    assert prompt[1:4] == [vocab["the"], vocab["cat"], vocab["sat"]]


def test_zero_shot_set_samples_rows_evenly(tokenizer):
    texts = [f"w{i}" for i in range(40)]
    labels = np.repeat([0, 1, 2, 3], 10)  # sorted by label, as files often are
    examples = zero_shot_set(texts, labels, ["a", "b", "c", "d"], tokenizer, "{text}", 4, 32)
    assert sorted(examples.gold) == [0, 1, 2, 3]


def test_zero_shot_set_without_labels_is_none(tokenizer):
    assert zero_shot_set(["a"], None, ["x"], tokenizer, "{text}", 5, 32) is None


@pytest.mark.parametrize("template", ["Topic:", "{text} {label}", "{0}{text}"])
def test_bad_template_is_an_input_error(tokenizer, template):
    with pytest.raises(InputError, match="dataset.promptTemplate"):
        zero_shot_set(["a"], np.array([0]), ["x"], tokenizer, template, 5, 32)


def test_template_longer_than_the_budget_is_an_input_error(tokenizer):
    with pytest.raises(InputError, match="dataset.promptTemplate"):
        zero_shot_set(["a"], np.array([0]), ["sport"], tokenizer, "the the the the {text}", 5, 4)
