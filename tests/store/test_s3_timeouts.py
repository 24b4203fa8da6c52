"""Bounded S3 calls: an endpoint that accepts connections and never answers, or refuses them.

No MinIO needed: a local TCP server plays the hostile endpoint. Bounds are generous (a loaded
2-core machine) but far below botocore's defaults (60 s timeouts and retries: minutes per call).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillery.store import S3Store, StoreError, open_store
from tests.silent_endpoint import SilentServer, serving

SECRET = "very-secret-key-" + "q" * 16


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    yield from serving()


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY",
                "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "id-123", "AWS_SECRET_ACCESS_KEY": SECRET}


def _open(port: int, **timeouts) -> S3Store:
    store = open_store("s3://bucket/runs", endpoint=f"http://127.0.0.1:{port}", region="us-east-1",
                       credentials=CREDENTIALS, **timeouts)
    assert isinstance(store, S3Store)
    return store


def _assert_one_line_naming(err: StoreError, port: int, key: str) -> None:
    message = str(err)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and f"s3://bucket/runs/{key}" in message
    assert SECRET not in message and "id-123" not in message


def test_a_silent_endpoint_costs_at_most_the_timeouts_times_the_attempts(silent_server, no_aws_env) -> None:
    store = _open(silent_server.port, connect_timeout=1, read_timeout=2, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as e:
        store.read_bytes("progress.json")
    elapsed = time.monotonic() - started
    print(f"\nsilent endpoint, 1 s connect / 2 s read / 2 attempts: StoreError after {elapsed:.1f} s")
    _assert_one_line_naming(e.value, silent_server.port, "progress.json")
    assert "read timeout" in str(e.value) and "2 attempts" in str(e.value)
    assert elapsed >= 2 * 2 - 0.5  # both tries waited for their read timeout...
    assert elapsed < 60  # ...and no more (botocore's defaults: several minutes)
    assert len(silent_server.accepted) == 2  # exactly max_attempts connections


def test_a_silent_endpoint_is_not_waited_for_twice_by_a_whole_upload_retry(
        silent_server, no_aws_env, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    store = _open(silent_server.port, connect_timeout=1, read_timeout=1, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as e:
        store.upload_file(src, "model/f.bin")
    elapsed = time.monotonic() - started
    print(f"\nsilent endpoint, upload, 1 s / 1 s / 2 attempts: StoreError after {elapsed:.1f} s")
    _assert_one_line_naming(e.value, silent_server.port, "model/f.bin")
    assert elapsed < 60
    assert len(silent_server.accepted) == 2  # a timed-out transfer is not started again


def test_a_refusing_endpoint_fails_fast_with_one_line(no_aws_env) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = _open(port, connect_timeout=1, read_timeout=1, max_attempts=2)
    started = time.monotonic()
    for key, call in (("a.json", lambda: store.read_bytes("a.json")),
                      ("b.json", lambda: store.write_text("b.json", "{}")),
                      ("c", lambda: store.list_keys("c"))):
        with pytest.raises(StoreError) as e:
            call()
        _assert_one_line_naming(e.value, port, key)
        assert "cannot reach the S3 endpoint" in str(e.value)
    assert time.monotonic() - started < 30


def test_endpoint_user_info_never_reaches_the_message(no_aws_env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = open_store("s3://bucket/runs", endpoint=f"http://user:{SECRET}@127.0.0.1:{port}",
                       credentials=CREDENTIALS, connect_timeout=1, read_timeout=1, max_attempts=1)
    with pytest.raises(StoreError) as e:
        store.read_bytes("x")
    assert SECRET not in str(e.value) and f"127.0.0.1:{port}" in str(e.value)


def test_timeouts_and_attempts_reach_botocore(no_aws_env) -> None:
    store = _open(9, connect_timeout=3, read_timeout=10, max_attempts=2)
    config = store._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 10)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}
    default = _open(9)
    assert (default._client.meta.config.connect_timeout, default._client.meta.config.read_timeout) == (10, 60)
    with pytest.raises(ValueError):
        _open(9, max_attempts=0)


def test_a_write_to_a_refusing_endpoint_is_retried_as_a_whole(no_aws_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("distillery.store.TRANSFER_BACKOFF_S", (0.2,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = _open(port, connect_timeout=1, read_timeout=1, max_attempts=3)
    puts: list[int] = []
    store._client.meta.events.register("provide-client-params.s3.PutObject", lambda **_: puts.append(1))
    with pytest.raises(StoreError) as e:
        store.write_text("progress.json", "{}")
    _assert_one_line_naming(e.value, port, "progress.json")
    assert len(puts) == 3  # three whole tries (each with botocore's own quick retries)
