"""The S3 store against a real MinIO server (see the `minio` and `s3_env` fixtures)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError

from distillery.store import S3Store, StoreError, materialize, open_store

pytestmark = pytest.mark.minio


@pytest.fixture
def s3(s3_env: str) -> S3Store:
    s = open_store(f"s3://{s3_env}/runs/r1")
    assert isinstance(s, S3Store)
    return s


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_bytes_text_json_round_trip(s3: S3Store, s3_env: str) -> None:
    assert s3.root_uri == f"s3://{s3_env}/runs/r1"
    assert s3.uri_for("a/b.json") == f"s3://{s3_env}/runs/r1/a/b.json"
    assert s3.local_path("a") is None

    s3.write_bytes("a/blob.bin", b"\x00\x01binary")
    s3.write_text("notes.txt", "héllo\n")
    obj = {"zeta": 1, "alpha": [1, 2]}
    s3.write_json("result.json", obj)

    assert s3.read_bytes("a/blob.bin") == b"\x00\x01binary"
    assert s3.read_text("notes.txt") == "héllo\n"
    assert s3.read_json("result.json") == obj
    assert s3.read_text("result.json") == '{\n  "zeta": 1,\n  "alpha": [\n    1,\n    2\n  ]\n}\n'
    assert s3.exists("a/blob.bin") and not s3.exists("a") and not s3.exists("nope")

    # the object really sits under the store's prefix
    root = open_store(f"s3://{s3_env}")
    assert root.read_bytes("runs/r1/a/blob.bin") == b"\x00\x01binary"


def test_not_found_errors_name_the_uri(s3: S3Store, tmp_path: Path) -> None:
    uri = s3.uri_for("missing/file.json")
    for call in (
        lambda: s3.read_bytes("missing/file.json"),
        lambda: s3.download_file("missing/file.json", tmp_path / "dl"),
    ):
        with pytest.raises(StoreError) as e:
            call()
        assert str(e.value) == f"not found: {uri}"
    with pytest.raises(StoreError, match=f"^not found: {s3.uri_for('missing')}$"):
        s3.download_tree("missing", tmp_path / "tree")
    assert not (tmp_path / "dl").exists()


def test_list_keys_is_sorted_recursive_and_folder_scoped(s3: S3Store, s3_env: str) -> None:
    for key in ("x/2/3", "x/1", "xy/4", "top"):
        s3.write_text(key, key)
    open_store(f"s3://{s3_env}/runs/r10").write_text("other", "not in r1")

    assert s3.list_keys() == ["top", "x/1", "x/2/3", "xy/4"]
    assert s3.list_keys("x") == ["x/1", "x/2/3"]
    assert s3.list_keys("x/2") == ["x/2/3"]
    assert s3.list_keys("nothing") == []


def test_files_and_trees(s3: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(os.urandom(3000))

    s3.upload_file(src / "config.json", "single/config.json")
    s3.download_file("single/config.json", tmp_path / "dl" / "deep" / "c.json")
    assert (tmp_path / "dl" / "deep" / "c.json").read_text() == "{}"

    keys = s3.upload_tree(src, "models/m1")
    assert keys == ["models/m1/config.json", "models/m1/sub/weights.bin"]
    assert s3.list_keys("models/m1") == keys
    out = s3.download_tree("models/m1", tmp_path / "copy")
    assert _files(out) == ["config.json", "sub/weights.bin"]
    assert (out / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()

    with pytest.raises(StoreError, match="not found"):
        s3.upload_file(tmp_path / "no-such-file", "x")


def test_delete_and_delete_prefix(s3: S3Store) -> None:
    for key in ("run/a", "run/b/c", "runner/d", "keep"):
        s3.write_text(key, key)
    s3.delete("run/a")
    s3.delete("run/a")  # missing: no error
    assert s3.list_keys() == ["keep", "run/b/c", "runner/d"]
    s3.delete_prefix("run")
    assert s3.list_keys() == ["keep", "runner/d"]
    s3.delete_prefix("no/such/prefix")
    s3.delete_prefix("")
    assert s3.list_keys() == []


def test_materialize_file_and_directory(s3: S3Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    s3.write_text("teacher/config.json", '{"v": 1}')
    s3.write_bytes("teacher/weights/model.safetensors", b"weights")

    f = materialize(s3.uri_for("teacher/config.json"), cache)
    assert f.is_file() and f.read_text() == '{"v": 1}'
    assert cache in f.parents

    d = materialize(s3.uri_for("teacher"), cache)
    assert d.is_dir() and cache in d.parents
    assert _files(d) == ["config.json", "weights/model.safetensors"]

    # a second materialize mirrors the store: stale files from the first one are gone
    s3.delete("teacher/weights/model.safetensors")
    s3.write_text("teacher/tokenizer.json", "{}")
    d2 = materialize(s3.uri_for("teacher") + "/", cache)
    assert d2 == d
    assert _files(d2) == ["config.json", "tokenizer.json"]
    assert [p.name for p in d.parent.iterdir()] == ["teacher"]  # no staging dirs left

    missing = s3.uri_for("no/such/thing")
    with pytest.raises(StoreError, match=f"^not found: {missing}$"):
        materialize(missing, cache)


def test_explicit_endpoint_and_region_arguments(
    s3_env: str, minio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_REGION")
    s = open_store(f"s3://{s3_env}/p", endpoint=minio.endpoint, region="us-east-1")
    s.write_text("k", "v")
    assert s.read_text("k") == "v"


def test_missing_bucket_is_a_clear_error(s3_env: str) -> None:
    s = open_store("s3://no-such-bucket-distillery/x")
    with pytest.raises(StoreError, match=r"^no such bucket: s3://no-such-bucket-distillery "):
        s.read_bytes("k")
    with pytest.raises(StoreError, match="no such bucket"):
        s.write_text("k", "v")


def _assert_secret_free(err: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(err))
    for secret in secrets:
        assert secret not in text


def test_bad_credentials_give_access_denied_without_the_secret(
    s3: S3Store, s3_env: str, minio, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.write_text("k", "v")
    wrong = "wrong-secret-" + "z" * 20
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    bad = open_store(s3.root_uri)
    (tmp_path / "f").write_text("x")
    for call in (
        lambda: bad.read_bytes("k"),
        lambda: bad.write_text("k", "v2"),
        lambda: bad.upload_file(tmp_path / "f", "k"),
        lambda: bad.list_keys(),
    ):
        with pytest.raises(StoreError) as e:
            call()
        assert str(e.value).startswith(f"access denied to {s3.root_uri}")
        assert "AWS_SECRET_ACCESS_KEY" in str(e.value)
        _assert_secret_free(e.value, wrong, minio.secret_key)
    assert s3.read_text("k") == "v"


def test_not_found_error_is_secret_free(s3: S3Store, minio) -> None:
    with pytest.raises(StoreError) as e:
        s3.read_bytes("nope")
    _assert_secret_free(e.value, minio.secret_key)


def _count_calls(store: S3Store, operation: str) -> list[dict]:
    calls: list[dict] = []
    store._client.meta.events.register(f"provide-client-params.s3.{operation}",
                                       lambda params, **_: calls.append(dict(params)))
    return calls


def _fail_part(part: int, times: int):
    """An UploadPart hook that cuts the connection on part `part`, `times` times."""
    failures = []

    def hook(params, **_):
        if params.get("PartNumber") == part and len(failures) < times:
            failures.append(part)
            raise ConnectionClosedError(endpoint_url="simulated network failure")

    return hook


def test_failed_multipart_upload_keeps_the_old_object(
        s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large upload that dies midway (after botocore's retries) leaves the previous object
    intact and nothing partial; with one attempt allowed it fails with one line."""
    s3 = open_store(f"s3://{s3_env}/runs/r1", max_attempts=1)
    s3.write_bytes("big.bin", b"old")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # above boto3's 8 MiB multipart threshold

    s3._client.meta.events.register("provide-client-params.s3.UploadPart", _fail_part(2, times=99))
    with pytest.raises(StoreError) as e:
        s3.upload_file(big, "big.bin")
    assert str(e.value).startswith("cannot reach the S3 endpoint 127.0.0.1:")
    assert s3.uri_for("big.bin") in str(e.value) and "\n" not in str(e.value)

    assert s3.read_bytes("big.bin") == b"old"
    assert s3.list_keys() == ["big.bin"]
    uploads = s3._client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert uploads == []  # the partial upload was aborted


def test_a_multipart_upload_cut_off_is_retried_as_a_whole(
        s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("distillery.store.TRANSFER_BACKOFF_S", (0.1,))
    s3 = open_store(f"s3://{s3_env}/runs/r1", max_attempts=3)
    s3.write_bytes("big.bin", b"old")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    # A failure raised before the request is sent skips botocore's own retries: the part, and
    # with it the transfer, fails for good the first time.
    s3._client.meta.events.register("provide-client-params.s3.UploadPart", _fail_part(2, times=1))
    started = _count_calls(s3, "CreateMultipartUpload")
    # boto3's own abort of the failed try fails too (as while an endpoint is down): the store's
    # next try must abort that upload itself.
    aborts: list[str] = []

    def fail_first_abort(params, **_):
        aborts.append(params["UploadId"])
        if len(aborts) == 1:
            raise ConnectionClosedError(endpoint_url="simulated network failure")

    s3._client.meta.events.register("provide-client-params.s3.AbortMultipartUpload", fail_first_abort)

    s3.upload_file(big, "big.bin")

    assert len(started) == 2  # the whole transfer ran twice
    assert len(aborts) == 2 and aborts[0] == aborts[1]  # boto3's failed abort, then the store's
    assert s3.read_bytes("big.bin") == big.read_bytes()
    assert s3._client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert s3._started_uploads == {}


def test_permanent_errors_are_not_retried_as_a_whole(
        s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("distillery.store.TRANSFER_BACKOFF_S", (5.0,))
    s3 = open_store("s3://no-such-bucket-distillery/x", max_attempts=3)
    (tmp_path / "f").write_text("x")
    calls = _count_calls(s3, "PutObject")
    with pytest.raises(StoreError, match="no such bucket"):
        s3.upload_file(tmp_path / "f", "f")
    assert len(calls) == 1
