"""Incremental distillation of a decoder: a student distilled on old topics continues on new ones
(student.base whole), forgetting measured on the old eval text as next-token accuracy and
perplexity, with EWC (the Fisher of the blocks' log-likelihood) and replay as remedies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distillery.api import load_job
from distillery_trainer.lm.model import CausalLMNet
from distillery_trainer.lm.quality import lm_quality
from distillery_trainer.lm.stages import torch_logits
from distillery_trainer.lm.text_blocks import pack_blocks
from distillery_trainer.pipeline import run
from distillery_trainer.progress import Progress
from tests.trainer.lm.test_run import BLOCK, decoder_job, trained_decoder  # noqa: F401 - module fixture
from tests.trainer.text.conftest import bbc_data, read_jsonl, write_jsonl  # noqa: F401 - session fixture

OLD_TOPICS = {"business", "tech"}


def quiet() -> Progress:
    return Progress(show_bar=False)


@pytest.fixture(scope="module")
def topic_split(bbc_data, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("topics")
    paths = {}
    for split, path in (("train", bbc_data.train), ("eval", bbc_data.eval)):
        rows = read_jsonl(path)
        for part, keep in (("old", True), ("new", False)):
            paths[f"{part}-{split}"] = write_jsonl(root / f"{part}-{split}.jsonl",
                                                   [r for r in rows if (r["label"] in OLD_TOPICS) == keep])
    return paths


def data(paths: dict[str, Path], part: str):
    return type("Data", (), {"train": paths[f"{part}-train"], "eval": paths[f"{part}-eval"]})


@pytest.fixture(scope="module")
def old_student(trained_decoder, topic_split, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("old-decoder")
    run(load_job(decoder_job(trained_decoder, data(topic_split, "old"), out)), progress=quiet())
    return out / "model"


def continued_job(teacher: Path, paths, base: Path, out: Path, **incremental) -> dict:
    ewc = incremental.pop("ewc", None)
    # Export and speed are not what these runs check: no int8 graph, the shortest decode timing.
    doc = decoder_job(teacher, data(paths, "new"), out, distillation={"epochs": 3, **({"ewc": ewc} if ewc else {})},
                      incremental={"previousTrainUri": str(paths["old-train"]),
                                   "previousEvalUri": str(paths["old-eval"]), **incremental},
                      export={"int8": False}, benchmark={"decodeTokens": 2})
    doc["spec"]["student"] = {"base": {"uri": str(base)}, "keepRatio": 1.0}
    return doc


@pytest.fixture(scope="module")
def continued(trained_decoder, topic_split, old_student, tmp_path_factory) -> dict:  # noqa: F811
    root = tmp_path_factory.mktemp("continued-decoder")
    runs = {name: run(load_job(continued_job(trained_decoder, topic_split, old_student, root / name, **settings)),
                      progress=quiet())
            for name, settings in (("plain", {}), ("replay", {"replayShare": 1.0}),
                                   ("ewc", {"ewc": {"lambda": 1.0e4, "fisherBatches": 2}}))}
    runs["root"] = root
    return runs


def old_eval_quality(model_dir: Path, paths) -> tuple[float, float]:
    """Next-token accuracy and perplexity of a saved decoder on the old eval text, computed here."""
    from transformers import AutoTokenizer

    net = CausalLMNet.load(model_dir)
    texts = [r["text"] for r in read_jsonl(paths["old-eval"])]
    blocks = pack_blocks([texts], AutoTokenizer.from_pretrained(str(model_dir)), BLOCK, "eval", None)
    q = lm_quality(torch_logits(net, torch.device("cpu")), blocks, 16, "cpu")
    return q.next_token_accuracy, q.perplexity


def test_a_continued_decoder_reports_the_old_text_before_and_after(continued, old_student, topic_split):
    plain = continued["plain"].incremental
    assert plain.parent == str(old_student)
    accuracy, perplexity = old_eval_quality(old_student, topic_split)
    assert plain.previous_accuracy_before == pytest.approx(accuracy, abs=1e-6)
    assert plain.previous_perplexity_before == pytest.approx(perplexity, rel=1e-4)
    after_accuracy, after_perplexity = old_eval_quality(continued["root"] / "plain" / "model", topic_split)
    assert plain.previous_accuracy_after == pytest.approx(after_accuracy, abs=1e-6)
    assert plain.previous_perplexity_after == pytest.approx(after_perplexity, rel=1e-4)
    assert plain.forgetting == pytest.approx(plain.previous_accuracy_before - plain.previous_accuracy_after, abs=2e-6)
    assert plain.replayed_rows == 0 and plain.ewc_lambda is None
    assert continued["plain"].layers_kept == [0, 1, 2, 3]  # student.base whole


def test_remedies_keep_the_old_text_better(continued, topic_split):
    plain, replay, ewc = (continued[n].incremental for n in ("plain", "replay", "ewc"))
    print(f"old-eval perplexity {plain.previous_perplexity_before:.2f} before; after: plain "
          f"{plain.previous_perplexity_after:.2f}, replay {replay.previous_perplexity_after:.2f}, "
          f"ewc {ewc.previous_perplexity_after:.2f}")
    new_train = read_jsonl(topic_split["new-train"])[:120]  # dataset.maxTrainRows
    assert replay.replayed_rows == min(len(read_jsonl(topic_split["old-train"])), len(new_train))
    assert ewc.ewc_lambda == 1.0e4 and ewc.fisher_rows == 32
    # Healing on new topics raises the old text's perplexity; the remedies less so.
    assert plain.previous_perplexity_after > plain.previous_perplexity_before
    assert replay.previous_perplexity_after < plain.previous_perplexity_after
    assert ewc.previous_perplexity_after < plain.previous_perplexity_after


def test_the_result_and_card_carry_the_old_perplexity(continued):
    result = continued["ewc"]
    stored = json.loads(result.to_json())["incremental"]
    assert stored["previousPerplexityAfter"] == result.incremental.previous_perplexity_after


@pytest.mark.parametrize(("student", "expected"), [
    ({"architecture": {"name": "mlp"}}, r"^student\.architecture: a causal-lm student is cut from a decoder"),
    ({"base": {"uri": "/nowhere", "format": "torch"}},
     r"^student\.base\.format: a causal-lm student\.base is a Hugging Face decoder directory"),
])  # fmt: skip
def test_a_decoder_student_that_is_not_a_decoder_is_refused_first(student, expected, tmp_path):
    from distillery_trainer.errors import InputError

    doc = decoder_job(tmp_path / "teacher", data({"new-train": tmp_path / "a", "new-eval": tmp_path / "b"}, "new"),
                      tmp_path / "out")
    doc["spec"]["student"].update(student)
    with pytest.raises(InputError, match=expected):
        run(load_job(doc), progress=quiet())
    assert not (tmp_path / "out").exists()
