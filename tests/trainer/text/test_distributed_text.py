"""Data-parallel healing of the tiny BERT under torchrun, against the one-process run."""

from __future__ import annotations

from tests.trainer.test_distributed import assert_same_training, one_process, run_json, torchrun


def test_two_processes_heal_the_tiny_bert_like_one(text_job, tmp_path, write_job_file):
    # Dropout off: with it on, each process draws its own masks and the curves agree only on average.
    docs = {name: text_job((tmp_path / name).as_uri(), distillation={"epochs": 1, "disableDropout": True})
            for name in ("one", "two")}
    one = run_json(one_process(write_job_file(docs["one"], "one.yaml")))
    two = run_json(torchrun(write_job_file(docs["two"], "two.yaml")))
    assert_same_training(one, two)
    assert abs(two["student"]["accuracy"] - one["student"]["accuracy"]) <= 1 / 100 + 1e-9  # 100 eval rows


def test_parameters_outside_the_loss_do_not_stall_two_processes(text_job, tmp_path, write_job_file):
    """As a sentence encoder the tiny BERT's pooler takes no part in the loss (mean-pooled
    embeddings, cosine loss): DDP must not wait for its gradients."""
    docs = {name: text_job((tmp_path / name).as_uri(), teacher={"task": "sentence-embedding"},
                           distillation={"epochs": 1, "disableDropout": True, "hiddenLoss": {"type": "cosine"}})
            for name in ("one", "two")}
    one = run_json(one_process(write_job_file(docs["one"], "one.yaml")))
    two = run_json(torchrun(write_job_file(docs["two"], "two.yaml")))
    assert_same_training(one, two)
