"""The local-file store: round trips, URI spellings, errors and atomic writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from distillery import store as store_mod
from distillery.store import FileStore, StoreError, materialize, open_store, split_uri


@pytest.fixture
def fs(tmp_path: Path) -> FileStore:
    s = open_store(str(tmp_path / "root"))
    assert isinstance(s, FileStore)
    return s


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_bytes_text_json_round_trip(fs: FileStore) -> None:
    fs.write_bytes("a/b/blob.bin", b"\x00\x01binary")
    fs.write_text("notes.txt", "héllo\n")
    obj = {"zeta": 1, "alpha": [1, 2], "nested": {"x": None}}
    fs.write_json("run/result.json", obj)

    assert fs.read_bytes("a/b/blob.bin") == b"\x00\x01binary"
    assert fs.read_text("notes.txt") == "héllo\n"
    assert fs.read_json("run/result.json") == obj
    # indent=2, key order kept, trailing newline
    assert fs.read_text("run/result.json") == json.dumps(obj, indent=2) + "\n"
    assert fs.exists("a/b/blob.bin") and not fs.exists("a/b") and not fs.exists("nope")


def test_overwrite_replaces_content(fs: FileStore) -> None:
    fs.write_text("k", "old")
    fs.write_text("k", "new")
    assert fs.read_text("k") == "new"
    assert _all_files(fs.root) == ["k"]


def test_uri_for_and_local_path(fs: FileStore, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert fs.root_uri == f"file://{root}"
    assert fs.uri_for("a/b.txt") == f"file://{root}/a/b.txt"
    assert fs.uri_for("/a//b.txt/") == f"file://{root}/a/b.txt"
    assert fs.uri_for("") == fs.root_uri
    assert fs.local_path() == root
    fs.write_text("a/b.txt", "x")
    assert fs.local_path("a/b.txt") == root / "a" / "b.txt"
    assert (root / "a" / "b.txt").read_text() == "x"


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "./x", ""])
def test_invalid_keys_rejected(fs: FileStore, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid key"):
        fs.write_text(bad, "x")


def test_uri_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = (tmp_path / "out").resolve()
    for uri in (f"file://{expected}", f"file://localhost{expected}", str(expected),
                "./out", "out", "file://out", "file://./out"):  # fmt: skip
        s = open_store(uri)
        assert isinstance(s, FileStore), uri
        assert s.local_path().resolve() == expected, uri
    assert split_uri(f"file://{expected}/a/b") == ("file:///", f"{expected}/a/b".lstrip("/"))
    assert open_store("file:///").uri_for(split_uri("/x/y")[1]) == "file:///x/y"


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "hdfs:///x"])
def test_unsupported_scheme(uri: str) -> None:
    scheme = uri.split(":")[0]
    with pytest.raises(StoreError, match=f"unsupported store URI scheme '{scheme}'") as e:
        open_store(uri)
    assert uri in str(e.value)


def test_not_found_errors_name_the_uri(fs: FileStore, tmp_path: Path) -> None:
    uri = fs.uri_for("missing/file.json")
    for call in (
        lambda: fs.read_bytes("missing/file.json"),
        lambda: fs.read_json("missing/file.json"),
        lambda: fs.download_file("missing/file.json", tmp_path / "dl"),
    ):
        with pytest.raises(StoreError) as e:
            call()
        assert str(e.value) == f"not found: {uri}"
    with pytest.raises(StoreError, match=f"not found: {fs.uri_for('missing')}"):
        fs.download_tree("missing", tmp_path / "tree")


def test_list_keys_is_sorted_recursive_and_folder_scoped(fs: FileStore) -> None:
    for key in ("x/2/3", "x/1", "xy/4", "top"):
        fs.write_text(key, key)
    assert fs.list_keys() == ["top", "x/1", "x/2/3", "xy/4"]
    assert fs.list_keys("x") == ["x/1", "x/2/3"]  # never "xy/4"
    assert fs.list_keys("x/") == ["x/1", "x/2/3"]
    assert fs.list_keys("x/2") == ["x/2/3"]
    assert fs.list_keys("nothing") == []


def test_files_and_trees(fs: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(b"w" * 1000)

    fs.upload_file(src / "config.json", "single/config.json")
    assert fs.read_text("single/config.json") == "{}"
    fs.download_file("single/config.json", tmp_path / "dl" / "deep" / "c.json")
    assert (tmp_path / "dl" / "deep" / "c.json").read_text() == "{}"

    keys = fs.upload_tree(src, "models/m1")
    assert keys == ["models/m1/config.json", "models/m1/sub/weights.bin"]
    assert fs.list_keys("models/m1") == keys

    out = fs.download_tree("models/m1", tmp_path / "copy")
    assert out == tmp_path / "copy"
    assert _all_files(out) == ["config.json", "sub/weights.bin"]
    assert (out / "sub" / "weights.bin").read_bytes() == b"w" * 1000

    with pytest.raises(StoreError, match="not found"):
        fs.upload_file(tmp_path / "no-such-file", "x")
    with pytest.raises(StoreError, match="not a directory"):
        fs.upload_tree(tmp_path / "no-such-dir", "x")


def test_upload_of_the_file_in_place_is_a_no_op(fs: FileStore) -> None:
    fs.write_text("a.txt", "same")
    fs.upload_file(fs.local_path("a.txt"), "a.txt")
    assert fs.read_text("a.txt") == "same"


def test_delete_and_delete_prefix(fs: FileStore) -> None:
    for key in ("run/a", "run/b/c", "runner/d", "keep"):
        fs.write_text(key, key)
    fs.delete("run/a")
    fs.delete("run/a")  # missing: no error
    fs.delete("never/existed")
    assert fs.list_keys() == ["keep", "run/b/c", "runner/d"]
    fs.delete_prefix("run")
    assert fs.list_keys() == ["keep", "runner/d"]
    fs.delete_prefix("no/such/prefix")
    fs.delete_prefix("")
    assert fs.list_keys() == []
    assert fs.local_path().is_dir()  # the root itself stays


def test_materialize_returns_the_path_itself(fs: FileStore, tmp_path: Path) -> None:
    fs.write_text("m/config.json", "{}")
    cache = tmp_path / "cache"
    file_path = materialize(fs.uri_for("m/config.json"), cache)
    assert file_path == fs.local_path("m/config.json")
    dir_path = materialize(str(fs.local_path("m")), cache)
    assert dir_path == fs.local_path("m")
    assert not cache.exists()  # nothing copied
    missing = fs.uri_for("nope")
    with pytest.raises(StoreError, match=f"^not found: {missing}$"):
        materialize(missing, cache)


def test_written_files_get_normal_permissions(fs: FileStore) -> None:
    umask = os.umask(0o022)
    try:
        fs.write_text("p.txt", "x")
    finally:
        os.umask(umask)
    assert (fs.local_path("p.txt").stat().st_mode & 0o777) == 0o644


def test_failed_write_keeps_the_old_object_and_leaves_no_temp_files(
    fs: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs.write_text("model.bin", "old content")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, "replace", failing_replace)
    with pytest.raises(StoreError, match=f"cannot write {fs.uri_for('model.bin')}"):
        fs.write_bytes("model.bin", b"new content")
    monkeypatch.undo()

    assert fs.read_text("model.bin") == "old content"
    assert _all_files(fs.root) == ["model.bin"]


def test_upload_failing_midway_is_never_visible(
    fs: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs.write_text("w.bin", "old")
    src = tmp_path / "big.bin"
    src.write_bytes(b"n" * 4096)
    seen_during_write = []

    def copy_half_then_fail(fin, fout, length=0):
        fout.write(fin.read(2048))
        fout.flush()
        seen_during_write.append(fs.read_text("w.bin"))  # a concurrent reader
        seen_during_write.append(fs.list_keys())
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(StoreError, match="Input/output error"):
        fs.upload_file(src, "w.bin")
    assert seen_during_write == ["old", ["w.bin"]]  # temp file invisible to list_keys
    assert fs.read_text("w.bin") == "old"
    assert _all_files(fs.root) == ["w.bin"]
