"""Splits, encoded tensors and teacher outputs kept on disk (memory-mapped) instead of in memory:
each must hold exactly what the in-memory path held, read a chunk of rows at a time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distillery.api.job import Dataset
from distillery_trainer import data as data_module
from distillery_trainer import teacher_cache
from distillery_trainer.data import Split, read_jsonl, read_npz
from distillery_trainer.encode import encode_text
from distillery_trainer.errors import InputError
from distillery_trainer.evaluation import knn_accuracy
from distillery_trainer.outputs import OutputWriter, TeacherOutputs


def npz_spec() -> Dataset:
    return Dataset(format="npz", trainUri="file:///t.npz", evalUri="file:///e.npz")


def jsonl_spec() -> Dataset:
    return Dataset(format="jsonl", trainUri="file:///t.jsonl", evalUri="file:///e.jsonl")


def features(rows: int = 10, width: int = 3, dtype=np.float32) -> np.ndarray:
    return (np.arange(rows * width, dtype=np.float64).reshape(rows, width) / 7).astype(dtype)


# ----------------------------------------------------------------------------- NPZ


def test_an_uncompressed_member_is_mapped_in_place(tmp_path):
    x = features()
    np.savez(tmp_path / "d.npz", x=x, label=np.arange(10) % 2)
    split = read_npz(tmp_path / "d.npz", npz_spec(), "train", None, True, tmp_path / "scratch")
    assert isinstance(split.features, np.memmap) and Path(split.features.filename) == tmp_path / "d.npz"
    np.testing.assert_array_equal(split.features, x)
    assert split.raw_labels == [0, 1] * 5
    assert not (tmp_path / "scratch").exists()  # nothing was copied


def test_a_compressed_member_is_copied_in_chunks_then_mapped(tmp_path):
    x = features()
    np.savez_compressed(tmp_path / "d.npz", x=x, label=np.arange(10))
    split = read_npz(tmp_path / "d.npz", npz_spec(), "train", 4, True, tmp_path / "scratch")
    assert isinstance(split.features, np.memmap) and str(tmp_path / "scratch") in str(split.features.filename)
    np.testing.assert_array_equal(split.features, x[:4])


def test_other_dtypes_become_float32_on_disk(tmp_path):
    x = features(dtype=np.float64)
    np.savez(tmp_path / "d.npz", x=x, label=np.arange(10))
    split = read_npz(tmp_path / "d.npz", npz_spec(), "train", None, True, tmp_path / "scratch")
    assert split.features.dtype == np.float32 and isinstance(split.features, np.memmap)
    np.testing.assert_array_equal(split.features, x.astype(np.float32))


def test_a_non_finite_row_is_found_past_the_first_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHUNK_ROWS", 3)
    x = features(dtype=np.float64)
    x[7, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x, label=np.arange(10))
    with pytest.raises(InputError, match="row 8: array 'x'"):
        read_npz(tmp_path / "d.npz", npz_spec(), "train", None, True, tmp_path / "scratch")


def test_object_members_are_refused_in_both_layouts(tmp_path):
    objects = np.array([{"a": 1}] * 3, dtype=object)
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "d.npz", x=objects, label=np.arange(3))
        with pytest.raises(InputError, match="holds Python objects"):
            read_npz(tmp_path / "d.npz", npz_spec(), "train", None, True, tmp_path / "scratch")


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_texts_stay_in_the_file_and_read_back_in_order(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"row {i} \u00e9", "label": i % 3} for i in range(9)]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(4, "")  # a blank line is skipped
    path.write_bytes("\r\n".join(lines).encode())  # Windows line ends too
    split = read_jsonl(path, jsonl_spec(), "train", None, True)
    assert split.texts is None and len(split) == 9
    assert [t for chunk in split.text_chunks(4) for t in chunk] == [r["text"] for r in rows]
    assert split.all_texts() == [r["text"] for r in rows]
    assert split.raw_labels == [r["label"] for r in rows]
    assert len(read_jsonl(path, jsonl_spec(), "train", 5, True)) == 5
    path.write_bytes(b"{not json\n" * 20)  # replaced after it was checked
    with pytest.raises(InputError, match="changed while it was read"):
        split.all_texts()


class WordTokenizer:
    """The part of a Hugging Face tokenizer encode_text uses: ids are word lengths + 1, pad 0."""

    def __call__(self, texts, truncation, max_length, padding, return_tensors):
        ids = [[len(w) + 1 for w in t.split()][:max_length] for t in texts]
        width = max_length if padding == "max_length" else max(map(len, ids))
        out = {"input_ids": [r + [0] * (width - len(r)) for r in ids],
               "attention_mask": [[1] * len(r) + [0] * (width - len(r)) for r in ids]}
        if return_tensors == "pt":
            return {k: torch.tensor(v) for k, v in out.items()}
        return {k: np.array(v) for k, v in out.items()}


def test_text_encoded_on_disk_equals_text_encoded_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr("distillery_trainer.encode.TEXT_CHUNK_ROWS", 2)
    texts = ["a bb ccc", "dddd", "e f g h i j", "kk"]
    split = Split("train", texts=texts, labels=np.arange(4))
    in_memory = encode_text(split, WordTokenizer(), 5)
    on_disk = encode_text(split, WordTokenizer(), 5, tmp_path / "enc")
    for name, tensor in in_memory.tensors.items():
        assert torch.equal(on_disk.tensors[name], tensor), name  # as wide as the longest row (5)
    assert (tmp_path / "enc" / "input_ids.npy").exists()
    assert torch.equal(on_disk.batch(torch.tensor([3, 1]))["input_ids"], torch.tensor([[3], [5]]))  # trimmed to the batch
    assert teacher_cache.encoded_digest(on_disk) == teacher_cache.encoded_digest(in_memory)


# ----------------------------------------------------------------------------- teacher outputs


def outputs(rows: int, seed: int) -> TeacherOutputs:
    g = torch.Generator().manual_seed(seed)
    return TeacherOutputs(torch.randn(rows, 4, generator=g), torch.randn(rows, 6, generator=g))


def test_outputs_written_batch_by_batch_are_the_outputs(tmp_path):
    whole = outputs(10, 0)
    writer = OutputWriter(tmp_path / "out", 10)
    for start in range(0, 10, 3):
        writer.add(whole.rows(torch.arange(start, min(start + 3, 10))))
    mapped = writer.finish()
    assert torch.equal(mapped.logits, whole.logits) and torch.equal(mapped.pooled, whole.pooled)
    assert mapped.topk_ids is None and (tmp_path / "out" / "logits.npy").exists()
    with pytest.raises(ValueError, match="expected"):
        OutputWriter(tmp_path / "short", 5).finish()


def test_the_digest_is_the_one_of_the_whole_tensors(monkeypatch):
    tensors = {"a": torch.randn(10, 3), "b": torch.arange(7, dtype=torch.int32)}
    before = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        before.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        before.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    monkeypatch.setattr(teacher_cache, "CHUNK_ROWS", 3)
    assert teacher_cache.tensors_digest(tensors) == before.hexdigest()  # cache keys did not change


def test_an_entry_streamed_to_a_file_reads_back_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_cache, "CHUNK_ROWS", 3)
    train, evals = outputs(10, 1), outputs(4, 2)
    path = tmp_path / "entry.safetensors"
    with path.open("wb") as fh:
        teacher_cache.write_entry(fh, "k", train, evals)
    assert path.read_bytes() == teacher_cache.encode_entry("k", train, evals)
    assert torch.equal(load_file(path)["train.logits"], train.logits)  # a standard safetensors file
    got_train, got_eval = teacher_cache.read_entry(path, "k", 10, 4)
    assert str(path) in Path("/proc/self/maps").read_text()  # the tensors are the file's pages
    assert torch.equal(got_train.pooled, train.pooled) and torch.equal(got_eval.logits, evals.logits)
    assert teacher_cache.decode_entry(path.read_bytes(), "k", 10, 4)[0].logits.equal(train.logits)


def test_a_tampered_file_entry_is_not_believed(tmp_path):
    path = tmp_path / "entry.safetensors"
    with path.open("wb") as fh:
        teacher_cache.write_entry(fh, "k", outputs(10, 1), outputs(4, 2))
    with pytest.raises(teacher_cache.BadCacheEntry, match="another format or key"):
        teacher_cache.read_entry(path, "other", 10, 4)
    with pytest.raises(teacher_cache.BadCacheEntry, match="one row per train example"):
        teacher_cache.read_entry(path, "k", 11, 4)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # one value changed, the hash left as it was
    path.write_bytes(bytes(blob))
    with pytest.raises(teacher_cache.BadCacheEntry, match="content hash"):
        teacher_cache.read_entry(path, "k", 10, 4)
    path.write_bytes(bytes(blob[:-9]))  # cut short
    with pytest.raises(teacher_cache.BadCacheEntry, match="not a readable safetensors file"):
        teacher_cache.read_entry(path, "k", 10, 4)


def test_knn_over_an_index_read_in_chunks_is_the_whole_index_knn():
    g = torch.Generator().manual_seed(0)
    index, labels = torch.randn(1000, 8, generator=g), torch.randint(0, 5, (1000,), generator=g)
    queries, query_labels = torch.randn(300, 8, generator=g), torch.randint(0, 5, (300,), generator=g)
    index[700] = index[3]  # a tie goes to the earlier row either way
    labels[700] = (labels[3] + 1) % 5
    nearest = (torch.nn.functional.normalize(queries, dim=-1)
               @ torch.nn.functional.normalize(index, dim=-1).T).argmax(dim=1)
    whole = int((labels[nearest] == query_labels).sum()) / 300
    assert knn_accuracy(index, labels, queries, query_labels, chunk=64, index_chunk=97) == whole


def test_an_exported_models_outputs_on_a_split_are_written_to_disk(tmp_path):
    """The int8 variant is scored from its ONNX file's outputs on whole splits: written batch by
    batch as memory-mapped files (the same numbers as gathering them in memory)."""
    from distillery.api.job import Hardware, Task
    from distillery_trainer.builtin import BuiltinConfig, BuiltinNet
    from distillery_trainer.encode import Encoded
    from distillery_trainer.nets import BuiltinWrapper
    from distillery_trainer.onnx_tools import export_onnx, onnx_outputs
    from distillery_trainer.stages import EVAL_BATCH, onnx_split_outputs
    from distillery_trainer.tasks import for_task

    torch.manual_seed(0)
    net = BuiltinWrapper(BuiltinNet(BuiltinConfig(architecture="mlp", num_classes=3, hidden_size=8, num_blocks=2,
                                                  input_dim=5)), Task.TABULAR_CLASSIFICATION)
    path = export_onnx(net, tmp_path / "model.onnx", (torch.randn(2, 5),), 17)
    rows = EVAL_BATCH * 2 + 7  # three batches, the last one short
    split = Encoded({"features": torch.randn(rows, 5)}, None)
    written = onnx_split_outputs(path, split, for_task(Task.TABULAR_CLASSIFICATION), Hardware.CPU, tmp_path / "out")
    on_disk = np.load(tmp_path / "out" / "logits.npy", mmap_mode="r")
    assert on_disk.shape == (rows, 3) and written.logits.shape == (rows, 3)
    gathered = onnx_outputs(path, split.batches(EVAL_BATCH), Hardware.CPU)
    assert torch.equal(written.logits, gathered) and np.array_equal(on_disk, gathered.numpy())
