"""Causal-LM evaluation: perplexity, next-token accuracy, agreement and zero-shot (lm/quality.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError
from distillery_trainer.lm.quality import (
    batch_label_scores,
    label_scores,
    lm_quality,
    teacher_top1_tokens,
    zero_shot_accuracy,
)
from distillery_trainer.lm.text_blocks import ZeroShotSet, zero_shot_set
from tests.trainer.lm.conftest import TINY_VOCAB, tiny_llama, tiny_tokenizer

VOCAB = TINY_VOCAB


def blocks(n, length, seed=0):
    ids = torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    return Encoded({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None)


def model_logits(model):
    return lambda batch: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def bigram_logits(table):
    """A rigged 'model': the logits at a position depend only on that position's token."""
    return lambda batch: table[batch["input_ids"]]


def test_perplexity_is_exp_of_next_token_cross_entropy():
    model, data = tiny_llama(), blocks(5, 9)
    with torch.no_grad():
        logits = model(input_ids=data.tensors["input_ids"]).logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), data.tensors["input_ids"][:, 1:].reshape(-1))
    accuracy = (logits[:, :-1].argmax(-1) == data.tensors["input_ids"][:, 1:]).float().mean()
    q = lm_quality(model_logits(model), data, batch_size=2, device="cpu")  # 2 + 2 + 1 rows: ragged last batch
    assert q.perplexity == pytest.approx(math.exp(ce.item()), rel=1e-5)
    assert q.next_token_accuracy == pytest.approx(accuracy.item())
    assert q.tokens == 5 * 8
    assert q.agreement is None


def test_accuracy_and_agreement_on_constructed_logits():
    table = torch.full((VOCAB, VOCAB), -5.0)
    table[torch.arange(VOCAB), (torch.arange(VOCAB) + 1) % VOCAB] = 5.0  # predicts token + 1
    ids = torch.tensor([[1, 2, 3, 9], [4, 4, 5, 6]])
    data = Encoded({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None)
    # Predictions: [2, 3, 4, 10] and [5, 5, 6, 7]; next tokens: [2, 3, 9] and [4, 5, 6] -> 4 of 6 right.
    teacher_top1 = torch.tensor([[2, 0, 4, 10], [5, 5, 0, 0]])  # 5 of 8 equal the predictions
    q = lm_quality(bigram_logits(table), data, 1, "cpu", teacher_top1)
    assert q.next_token_accuracy == pytest.approx(4 / 6)
    assert q.agreement == pytest.approx(5 / 8)
    assert q.tokens == 6
    # Only the likelihood of the true next tokens sets perplexity: right ones at p_hi, wrong at p_lo.
    p_hi = math.exp(5) / (math.exp(5) + (VOCAB - 1) * math.exp(-5))
    p_lo = math.exp(-5) / (math.exp(5) + (VOCAB - 1) * math.exp(-5))
    expected = math.exp(-(4 * math.log(p_hi) + 2 * math.log(p_lo)) / 6)
    assert q.perplexity == pytest.approx(expected, rel=1e-5)


def test_padding_positions_are_not_scored():
    table = torch.zeros(VOCAB, VOCAB)
    table[:, 7] = 10.0  # always predicts 7
    ids = torch.tensor([[1, 7, 7, 0], [7, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    data = Encoded({"input_ids": ids, "attention_mask": mask}, None)
    q = lm_quality(bigram_logits(table), data, 2, "cpu", torch.full((2, 4), 7))
    assert q.tokens == 3  # 1->7, 7->7 and 7->1
    assert q.next_token_accuracy == pytest.approx(2 / 3)
    assert q.agreement == pytest.approx(1.0)  # the 5 real positions all agree


def test_teacher_top1_tokens_match_the_models_argmax():
    model, data = tiny_llama(), blocks(3, 6)
    top1 = teacher_top1_tokens(model_logits(model), data, 2, "cpu")
    with torch.no_grad():
        assert torch.equal(top1, model(input_ids=data.tensors["input_ids"]).logits.argmax(-1))
    assert lm_quality(model_logits(model), data, 2, "cpu", top1).agreement == pytest.approx(1.0)


def rigged_examples():
    """Prompts end in token 1 or 2; labels are [10], [20, 21] and [30]."""
    return ZeroShotSet(prompt_ids=[[5, 1], [6, 6, 2], [1]], gold=[1, 2, 0], label_ids=[[10], [20, 21], [30]])


def test_zero_shot_picks_the_label_the_model_prefers():
    table = torch.zeros(VOCAB, VOCAB)
    table[1, 20] = 8.0  # after token 1 the model starts label 1 ...
    table[20, 21] = 8.0  # ... and completes it
    table[2, 30] = 8.0  # after token 2 it prefers label 2
    examples = rigged_examples()
    # Gold labels are [1, 2, 0]: the first two are what the model prefers, the third is not.
    assert zero_shot_accuracy(bigram_logits(table), examples, "cpu") == pytest.approx(2 / 3)


def test_summed_and_per_token_scores_differ_on_long_labels():
    table = torch.zeros(VOCAB, VOCAB)
    table[1, 10] = 3.0
    table[1, 20] = 2.9  # label 1's first token is almost as likely as label 0 ...
    table[20, 21] = 20.0  # ... and its second token is certain, so its mean per token is higher
    examples = ZeroShotSet(prompt_ids=[[1]], gold=[1], label_ids=[[10], [20, 21]])
    assert zero_shot_accuracy(bigram_logits(table), examples, "cpu") == 0.0
    assert zero_shot_accuracy(bigram_logits(table), examples, "cpu", per_token=True) == 1.0


def test_zero_shot_batched_scores_equal_unpadded_single_runs():
    """Right padding and running shared prefixes once must not change any label's score."""
    model = tiny_llama()
    prompt, labels = [3, 17, 42, 5], [[9], [11, 12, 13], [14, 15]]
    with torch.no_grad():
        alone = []
        for cont in labels:
            seq = torch.tensor([prompt + cont])
            logp = torch.log_softmax(model(input_ids=seq).logits[0], -1)
            alone.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont)))
    with torch.no_grad():
        batched = label_scores(model_logits(model), prompt, labels, "cpu", per_token=False)
    assert torch.allclose(batched, torch.tensor(alone, dtype=torch.float64), atol=1e-5)
    per_token = label_scores(model_logits(model), prompt, labels, "cpu", per_token=True)
    assert torch.allclose(per_token, torch.tensor([a / len(c) for a, c in zip(alone, labels, strict=True)], dtype=torch.float64), atol=1e-5)
    gold = max(range(3), key=lambda i: alone[i])
    examples = ZeroShotSet(prompt_ids=[prompt], gold=[gold], label_ids=labels)
    assert zero_shot_accuracy(model_logits(model), examples, "cpu") == 1.0
    # Every other gold label must be scored wrong, or the check above could pass by accident.
    for other in set(range(3)) - {gold}:
        wrong = ZeroShotSet(prompt_ids=[prompt], gold=[other], label_ids=labels)
        assert zero_shot_accuracy(model_logits(model), wrong, "cpu") == 0.0


def test_zero_shot_on_prompts_built_from_labelled_text():
    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    examples = zero_shot_set(["the cat sat", "a dog", "the match"], [0, 1, 0], ["sport", "tech"], tokenizer,
                             "{text} topic:", max_rows=10, max_prompt_tokens=16)
    table = torch.zeros(VOCAB, VOCAB)
    table[vocab[":"], vocab["sport"]] = 5.0  # after "topic:" the model always says sport
    assert zero_shot_accuracy(bigram_logits(table), examples, "cpu") == pytest.approx(2 / 3)


def test_zero_shot_without_rows_is_an_input_error():
    with pytest.raises(InputError, match="dataset.evalUri"):
        zero_shot_accuracy(bigram_logits(torch.zeros(VOCAB, VOCAB)), ZeroShotSet([], [], [[5]]), "cpu")


def test_prompts_of_different_lengths_batched_together_score_as_alone():
    model = tiny_llama()
    prompts, labels = [[3, 17, 42, 5], [8], [60, 61, 62, 63, 64, 65, 66]], [[9], [11, 12, 13], [14, 15]]
    with torch.no_grad():
        together = batch_label_scores(model_logits(model), prompts, labels, "cpu", per_token=True)
        for i, prompt in enumerate(prompts):
            alone = label_scores(model_logits(model), prompt, labels, "cpu", per_token=True)
            assert torch.allclose(together[i], alone, atol=1e-5)
    examples = ZeroShotSet(prompts, together.argmax(-1).tolist(), labels)
    for batch_size in (1, 4, 100):  # one prompt per forward, a ragged group, and all at once
        assert zero_shot_accuracy(model_logits(model), examples, "cpu", per_token=True, batch_size=batch_size) == 1.0
