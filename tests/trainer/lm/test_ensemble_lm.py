"""A causal-LM ensemble: the mixture of the teachers' cached top-k next-token lists (pure, checked
by hand and against full distributions), and a run distilling a tiny Llama from two of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distillery.api import load_job
from distillery.api.result import TrainerResult
from distillery_trainer.ensemble import mix, mix_top_k
from distillery_trainer.errors import InputError
from distillery_trainer.lm.logits import top_k_targets
from distillery_trainer.outputs import TeacherOutputs
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress
from tests.tiny_decoder import read_texts, write_tiny_llama
from tests.trainer.lm.test_run import decoder_job
from tests.trainer.text.conftest import bbc_data  # noqa: F401 - session fixture: BBC train/eval JSONL


def lists(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TeacherOutputs:
    logprobs, ids = top_k_targets(logits, k, temperature)
    return TeacherOutputs(None, None, logprobs, ids)


def test_two_identical_teachers_give_the_teachers_own_lists():
    logits = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))
    one = lists(logits, 8)
    both = mix([one, one], [0.3, 0.7], 1.0)
    assert torch.equal(both.topk_ids, one.topk_ids)
    assert torch.allclose(both.topk_logprobs, one.topk_logprobs, atol=1e-6)


def test_the_mixture_of_top_k_lists_by_hand():
    # One position, k = 2: teacher a lists tokens 4 (0.6) and 1 (0.3), teacher b lists 1 (0.5) and 7 (0.4).
    logprobs = [torch.tensor([[[math.log(0.6), math.log(0.3)]]]), torch.tensor([[[math.log(0.5), math.log(0.4)]]])]
    ids = [torch.tensor([[[4, 1]]], dtype=torch.int32), torch.tensor([[[1, 7]]], dtype=torch.int32)]
    mixed, top = mix_top_k(logprobs, ids, [1.0, 3.0])  # weights normalise to 0.25 / 0.75
    # token 1: 0.25 * 0.3 + 0.75 * 0.5 = 0.45; token 7: 0.75 * 0.4 = 0.3 (a did not list it); token 4: 0.15
    assert top.tolist() == [[[1, 7]]] and top.dtype == torch.int32
    assert torch.allclose(mixed.exp(), torch.tensor([[[0.45, 0.30]]]), atol=1e-6)


def test_overlapping_lists_mix_like_a_dense_sum_over_the_vocabulary():
    generator = torch.Generator().manual_seed(2)
    outputs = [lists(torch.randn(5, 7, 20, generator=generator) * s, 8) for s in (1.0, 2.0, 0.5)]
    weights = [0.5, 0.3, 0.2]
    mixed = mix(outputs, weights, 1.0)
    dense = torch.zeros(5, 7, 20, dtype=torch.float64)
    for o, w in zip(outputs, weights, strict=True):
        dense.scatter_add_(-1, o.topk_ids.long(), o.topk_logprobs.double().exp() * w)
    expected, expected_ids = dense.topk(8, dim=-1)
    assert torch.equal(mixed.topk_ids.long(), expected_ids)
    assert torch.allclose(mixed.topk_logprobs.double().exp(), expected, atol=1e-6)


def test_with_whole_vocabulary_lists_the_mixture_is_exact():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, 30, generator=generator), torch.randn(2, 4, 30, generator=generator) * 3
    temperature, weights = 2.0, [0.6, 0.4]
    mixed = mix([lists(a, 30, temperature), lists(b, 30, temperature)], weights, temperature)
    exact = (weights[0] * torch.softmax(a / temperature, -1) + weights[1] * torch.softmax(b / temperature, -1))
    assert torch.allclose(mixed.topk_logprobs.exp(), exact.gather(-1, mixed.topk_ids.long()), atol=1e-6)
    assert torch.equal(mixed.topk_ids.long(), exact.argsort(-1, descending=True))


def test_lists_of_other_lengths_are_refused():
    from distillery_trainer.ensemble import check_compatible

    logits = torch.randn(2, 5, 40)
    with pytest.raises(InputError, match=r"^ensemble\.teachers\[0\]: its outputs \(topk_ids \(5, 4\)\) do not "
                                         r"match the teacher's \(\(5, 8\)\); an ensemble needs one block length and topK"):
        check_compatible(lists(logits, 8), lists(logits, 4), "ensemble.teachers[0]")


# ----------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def decoders(bbc_data, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    texts = read_texts(bbc_data.train)
    root = tmp_path_factory.mktemp("tiny-llamas")
    with torch.random.fork_rng():
        # The same word tokenizer (built from the same texts); other weights and training batches.
        return (write_tiny_llama(root / "a", texts, seed=0), write_tiny_llama(root / "b", texts, seed=1, steps=100))


@pytest.fixture(scope="module")
def ensemble_run(decoders, bbc_data, tmp_path_factory) -> tuple[Path, TrainerResult]:  # noqa: F811
    out = tmp_path_factory.mktemp("lm-ensemble")
    doc = decoder_job(decoders[0], bbc_data, out,
                      ensemble={"teacherWeight": 2.0, "teachers": [{"uri": str(decoders[1]), "weight": 1.0}]})
    return out, run(load_job(doc), progress=Progress(show_bar=False))


def test_a_decoder_distils_from_an_ensemble_and_reports_each_teacher(ensemble_run, decoders):
    out, result = ensemble_run
    e = result.ensemble
    assert [m.uri for m in e.members] == [str(decoders[0]), str(decoders[1])]
    assert [m.weight for m in e.members] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert e.metric_name == "next-token-accuracy"
    assert e.members[0].perplexity == pytest.approx(result.teacher.perplexity, rel=1e-6)  # the teacher itself
    # log is concave: the mixture's log-likelihood is at least the weighted mean of the teachers'
    weighted = math.exp(sum(m.weight * math.log(m.perplexity) for m in e.members))
    assert e.perplexity <= weighted * (1 + 1e-6), (e.perplexity, weighted)
    assert math.isfinite(result.student.perplexity) and result.speedup is not None
    stored = json.loads((out / "result.json").read_text())
    assert stored["ensemble"]["perplexity"] == e.perplexity


def test_each_teachers_lists_are_cached_and_reused(ensemble_run, decoders, bbc_data, tmp_path, capsys):  # noqa: F811
    out, first = ensemble_run
    again = tmp_path / "again"
    doc = decoder_job(decoders[0], bbc_data, again, distillation={"epochs": 0},
                      ensemble={"teacherWeight": 2.0, "teachers": [{"uri": str(decoders[1]), "weight": 1.0}]})
    doc["spec"]["output"]["cacheUri"] = (out / "cache").as_uri()
    capsys.readouterr()
    run(load_job(doc), progress=Progress(show_bar=False))
    err = capsys.readouterr().err
    assert err.count("reusing cached teacher outputs") == 2, err


def test_an_online_ensemble_is_refused_before_anything_is_read(decoders, bbc_data, tmp_path):  # noqa: F811
    doc = decoder_job(decoders[0], bbc_data, tmp_path / "out", distillation={"teacherLogits": "online"},
                      ensemble={"teachers": [{"uri": str(decoders[1])}]})
    with pytest.raises(InputError, match=r"^ensemble: a causal-lm ensemble mixes the teachers' cached next-token "
                                         r"lists; use distillation.teacherLogits: top-k"):
        run(load_job(doc), progress=Progress(show_bar=False))
