"""The artifact store: one small interface over local files and S3.

Everything Distillery reads or writes (teacher models, datasets, checkpoints, exported students,
results) is addressed by a URI:

* ``s3://bucket/prefix`` — any S3-compatible endpoint (AWS, MinIO, ...), via boto3.
* ``file:///abs/path`` — a local (or mounted) directory. ``file://localhost/abs`` is the same.
  Any other ``file://x/y`` spelling is read as the *relative* path ``x/y`` (so ``file://./out``
  and ``file://out`` both mean ``./out``), because that is what people mean when they write it.
* A plain path (``./out``, ``/data/out``, ``~/out``) is the same as ``file://``.

A :class:`Store` is rooted at such a URI; keys below it are ``/``-separated relative paths.
Prefix operations (:meth:`Store.list_keys`, :meth:`Store.delete_prefix`,
:meth:`Store.download_tree`) treat the prefix as a folder: ``a/b`` covers ``a/b/...`` but never
``a/bc``.

Writes are atomic: a reader sees the old object or the new one, never a partial one.

Every S3 call has connect and read timeouts and a bounded number of attempts (see
:func:`open_store`): an endpoint that accepts connections and never answers costs at most
about ``(connect_timeout + read_timeout) * max_attempts``, and an endpoint that is down for a
while is waited for by retrying whole transfers with a growing pause.

This module must not import torch: the operator uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "FileStore",
    "S3Store",
    "Store",
    "StoreError",
    "materialize",
    "open_store",
    "split_uri",
]

# Suffix of the temporary files behind atomic local writes; listings skip them.
_TMP_SUFFIX = ".distillery-tmp"
_CHUNK = 1 << 20


class ConditionalWritesUnsupported(Exception):
    """The S3-compatible store refused a conditional PUT as not implemented."""


class StoreError(RuntimeError):
    """A store operation failed. The message names the full URI, never any credentials."""


def _clean_key(key: str, root_uri: str, *, allow_empty: bool = False) -> str:
    """Normalizes a key to 'a/b/c'; refuses keys that would escape the store root."""
    parts = [p for p in str(key).replace("\\", "/").split("/") if p]
    if any(p in (".", "..") for p in parts) or (not parts and not allow_empty):
        raise StoreError(f"invalid key {key!r} under {root_uri}")
    return "/".join(parts)


def _under(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix and key else prefix or key


class Store(ABC):
    """Objects under one root URI. Subclasses implement the primitives; the rest is shared."""

    root_uri: str

    def uri_for(self, key: str) -> str:
        return _under(self.root_uri, _clean_key(key, self.root_uri, allow_empty=True))

    # --- primitives -------------------------------------------------------------------------
    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object (a file, not a folder) exists at key."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content; StoreError("not found: <uri>") if there is none."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Creates or atomically replaces the object."""

    @abstractmethod
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Atomically stores a local file's content at key."""

    @abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Writes the object to local_path (atomically), creating parent directories."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """All keys under the folder `prefix`, recursive, sorted, relative to the root."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; no error if it is missing."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Removes every object under the folder `prefix` ("" means everything)."""

    def local_path(self, key: str = "") -> Path | None:
        """The object's real local path when the store is local (zero-copy), else None."""
        return None

    # --- conveniences built on the primitives -----------------------------------------------
    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        text = self.read_text(key)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"invalid JSON in {self.uri_for(key)}: {e}") from e

    def write_json(self, key: str, obj: Any) -> None:
        self.write_text(key, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def upload_tree(self, local_dir: str | os.PathLike[str], key_prefix: str) -> list[str]:
        """Uploads every file under local_dir to key_prefix/<relative path>; returns the keys."""
        root = Path(local_dir)
        if not root.is_dir():
            raise StoreError(f"not a directory: {root} (uploading to {self.uri_for(key_prefix)})")
        prefix = _clean_key(key_prefix, self.root_uri, allow_empty=True)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = _under(prefix, path.relative_to(root).as_posix())
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_tree(self, key_prefix: str, local_dir: str | os.PathLike[str]) -> Path:
        """Downloads everything under the folder key_prefix into local_dir; returns local_dir."""
        prefix = _clean_key(key_prefix, self.root_uri, allow_empty=True)
        keys = self.list_keys(prefix)
        if not keys:
            raise StoreError(f"not found: {self.uri_for(prefix)}")
        dest = Path(local_dir)
        for key in keys:
            relative = key[len(prefix) + 1 :] if prefix else key
            self.download_file(key, dest / relative)
        return dest


# ------------------------------------------------------------------------------------------
# Local files
# ------------------------------------------------------------------------------------------


def _atomic_write(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    """Writes path via a temp file in the same directory + fsync + rename.

    The rename is atomic on POSIX, so readers see the old or the new file. The temp file is
    created with mode 0666 & ~umask (like a plain open()), not mkstemp's 0600, so other users
    (e.g. a pod with another UID on a shared volume) can read the result.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _os_errors(uri: str, action: str) -> Iterator[None]:
    """Turns OSErrors into StoreErrors that name the URI."""
    try:
        yield
    except StoreError:
        raise
    except (FileNotFoundError, NotADirectoryError) as e:
        if action == "read":
            raise StoreError(f"not found: {uri}") from e
        raise StoreError(f"cannot {action} {uri}: {e.strerror or e}") from e
    except OSError as e:
        raise StoreError(f"cannot {action} {uri}: {e.strerror or e}") from e


class FileStore(Store):
    """A store in a local (or mounted) directory. Keys are paths below it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self.root_uri = f"file://{self.root.as_posix().rstrip('/')}"

    def _path(self, key: str, *, allow_empty: bool = False) -> Path:
        key = _clean_key(key, self.root_uri, allow_empty=allow_empty)
        return self.root / key if key else self.root

    def local_path(self, key: str = "") -> Path:
        return self._path(key, allow_empty=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with _os_errors(self.uri_for(key), "read"):
            if path.is_dir():
                raise StoreError(f"not found: {self.uri_for(key)} (it is a directory)")
            return path.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        with _os_errors(self.uri_for(key), "write"):
            _atomic_write(self._path(key), lambda f: f.write(data))

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        src, dest = Path(local_path), self._path(key)
        if not src.is_file():
            raise StoreError(f"not found: {src} (uploading to {self.uri_for(key)})")
        with _os_errors(self.uri_for(key), "write"):
            if dest.exists() and os.path.samefile(src, dest):
                return  # already in place (the caller used local_path())
            with src.open("rb") as fin:
                _atomic_write(dest, lambda f: shutil.copyfileobj(fin, f, _CHUNK))

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        src, dest = self._path(key), Path(local_path)
        with _os_errors(self.uri_for(key), "read"):
            if not src.is_file():
                raise StoreError(f"not found: {self.uri_for(key)}")
            if dest.exists() and os.path.samefile(src, dest):
                return
            with src.open("rb") as fin:
                _atomic_write(dest, lambda f: shutil.copyfileobj(fin, f, _CHUNK))

    def list_keys(self, prefix: str = "") -> list[str]:
        top = self._path(prefix, allow_empty=True)
        if not top.is_dir():
            return []
        keys = []
        with _os_errors(self.uri_for(prefix), "list"):
            for dirpath, _dirs, files in os.walk(top):
                for name in files:
                    if not name.endswith(_TMP_SUFFIX):  # an atomic write in progress
                        keys.append((Path(dirpath) / name).relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors(self.uri_for(key), "delete"):
            if path.is_dir():
                raise StoreError(f"cannot delete {self.uri_for(key)}: a folder; use delete_prefix")
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        top = self._path(prefix, allow_empty=True)
        with _os_errors(self.uri_for(prefix), "delete"):
            if top == self.root:
                # Empty the root but keep it: it may be a mount point.
                for child in top.iterdir() if top.is_dir() else []:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            elif top.is_dir() and not top.is_symlink():
                shutil.rmtree(top)


# ------------------------------------------------------------------------------------------
# S3 and S3-compatible endpoints
# ------------------------------------------------------------------------------------------

# Defaults suit the trainer, which may wait for its store; the operator passes shorter ones.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_MAX_ATTEMPTS = 5
# Pauses before the 2nd, 3rd, ... whole-transfer attempt: with 5 attempts a store that is down
# for up to about a minute (a restart, a failover) is waited for.
TRANSFER_BACKOFF_S = (4.0, 8.0, 16.0, 30.0)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


def _error_code(err: BaseException | None) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _error_message(err: BaseException | None) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))


def _http_status(err: BaseException | None) -> int:
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _root_cause(err: BaseException) -> BaseException:
    """The botocore error behind boto3's transfer wrappers (which chain or carry it)."""
    last = getattr(err, "last_exception", None)  # boto3/s3transfer RetriesExceededError
    if isinstance(last, BaseException):
        return last
    if type(err).__name__ == "S3UploadFailedError" and err.__context__ is not None:
        return err.__context__
    return err


def _host_of(endpoint_url: str | None) -> str:
    """host[:port] of an endpoint URL: no scheme, path or user-info (which could hold a secret)."""
    parts = urlsplit(endpoint_url or "")
    host = parts.hostname or "AWS"
    return f"{host}:{parts.port}" if parts.port else host


def _connection_trouble(err: BaseException) -> str | None:
    """A few words for a network-level failure (endpoint down, hanging, cut off), else None."""
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(err, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(err, ReadTimeoutError):
        return "no answer within the read timeout"
    if isinstance(err, EndpointConnectionError):
        return "connection failed"
    if isinstance(err, ConnectionClosedError | ResponseStreamingError):
        return "connection closed"
    return None


def _worth_retrying_whole(err: BaseException) -> bool:
    """Whether a failed transfer is worth starting again: the endpoint was down or cut the
    connection, or answered 5xx. Not timeouts: a hanging endpoint has already cost
    read_timeout * attempts, and must not cost that again."""
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    cause = _root_cause(err)
    if isinstance(cause, ConnectTimeoutError | ReadTimeoutError):
        return False
    if _connection_trouble(cause) is not None:
        return True
    return _http_status(cause) >= 500 or _error_code(cause) in {"SlowDown", "RequestTimeout"}


class S3Store(Store):
    """A store under s3://bucket/prefix.

    Credentials come from the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, or any other source boto3 knows). The endpoint is the argument, else
    boto3's own AWS_ENDPOINT_URL; path-style addressing so MinIO works without DNS tricks.

    Each request gets ``connect_timeout``/``read_timeout`` seconds per try and at most
    ``max_attempts`` tries (botocore's standard retry mode). Large transfers are multipart; a
    transfer that still fails because the endpoint is down is started again as a whole, up to
    ``max_attempts`` times with the pauses in TRANSFER_BACKOFF_S. S3 makes a multipart object
    visible only when it is completed, so the key holds the old object or the whole new one.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        credentials: dict[str, str] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        import boto3  # only S3 users pay for importing boto3
        from botocore.config import Config

        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.bucket = bucket
        self.root_uri = f"s3://{bucket}"
        self.prefix = _clean_key(prefix, self.root_uri, allow_empty=True)
        self.root_uri = _under(self.root_uri, self.prefix)
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self.max_attempts = max_attempts
        region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        # Explicit credentials (the operator's, read from a job's Secret) beat the environment.
        keys = {"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
                "AWS_SESSION_TOKEN": "aws_session_token"}
        session_args = {arg: (credentials or {}).get(env) for env, arg in keys.items() if (credentials or {}).get(env)}
        self._client = boto3.session.Session(**session_args).client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # total_max_attempts counts the first try (retries.max_attempts would not).
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
            ),
        )
        self.host = _host_of(self._client.meta.endpoint_url)
        # Multipart uploads started per key, so a retry can abort the ones a failed try left.
        self._started_uploads: dict[str, set[str]] = {}
        self._uploads_lock = threading.Lock()
        self._client.meta.events.register(
            "after-call.s3.CreateMultipartUpload", self._remember_upload
        )

    def _key(self, key: str, *, allow_empty: bool = False) -> str:
        return _under(self.prefix, _clean_key(key, self.root_uri, allow_empty=allow_empty))

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        """Turns boto errors into one-line StoreErrors naming the endpoint host and the URI (and
        never the credentials)."""
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except StoreError:
            raise
        except (ClientError, S3UploadFailedError, RetriesExceededError, BotoCoreError) as e:
            raise self._store_error(_root_cause(e), e, uri) from None
        # `from None` above: boto's chained exceptions carry request details we don't want in logs.

    def _store_error(self, err: BaseException, outer: BaseException, uri: str) -> StoreError:
        from botocore.exceptions import ClientError, NoCredentialsError

        trouble = _connection_trouble(err)
        if trouble is not None:
            return StoreError(
                f"cannot reach the S3 endpoint {self.host} for {uri}: {trouble} "
                f"({self.max_attempts} attempt{'s' if self.max_attempts > 1 else ''})"
            )
        if isinstance(err, NoCredentialsError):
            return StoreError(
                f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(err, ClientError):
            code = _error_code(err)
            if code in _NOT_FOUND:
                return StoreError(f"not found: {uri}")
            if code == "NoSuchBucket":
                return StoreError(f"no such bucket: s3://{self.bucket} (for {uri})")
            if code in _DENIED:
                return StoreError(
                    f"access denied to {uri}: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                )
            detail = " ".join(_error_message(err).split())  # one line
            return StoreError(f"S3 error on {uri}: {code or 'unknown'}" + (f": {detail}" if detail else ""))
        return StoreError(f"S3 error on {uri} at {self.host}: {type(outer).__name__}")

    # --- whole-transfer retries -------------------------------------------------------------
    def _remember_upload(self, parsed: dict | None = None, **_: Any) -> None:
        upload_id, key = (parsed or {}).get("UploadId"), (parsed or {}).get("Key")
        if upload_id and key:
            with self._uploads_lock:
                self._started_uploads.setdefault(key, set()).add(upload_id)

    def _uploads_of(self, full_key: str) -> set[str]:
        with self._uploads_lock:
            return set(self._started_uploads.get(full_key, ()))

    def _abort_uploads(self, full_key: str, upload_ids: set[str]) -> None:
        """Best effort: aborts multipart uploads a failed try of ours left (boto3 aborts them
        itself unless the endpoint was down at the time), so no parts linger; an id whose abort
        fails on the network is kept for the next try."""
        from botocore.exceptions import BotoCoreError, ClientError

        for upload_id in sorted(upload_ids):
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            except ClientError:
                pass  # NoSuchUpload: boto3 already aborted it
            except BotoCoreError:
                continue  # still unreachable: try again later
            with self._uploads_lock:
                self._started_uploads.get(full_key, set()).discard(upload_id)

    def _transfer(self, uri: str, run: Callable[[], None], full_key: str | None = None) -> None:
        """Runs a managed transfer; starts it again as a whole while the endpoint is down."""
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        key = full_key or ""
        try:
            for attempt in range(1, self.max_attempts + 1):
                before = self._uploads_of(key)
                try:
                    run()
                except (ClientError, S3UploadFailedError, RetriesExceededError, BotoCoreError) as e:
                    if attempt == self.max_attempts or not _worth_retrying_whole(e):
                        self._abort_uploads(key, self._uploads_of(key))
                        raise self._store_error(_root_cause(e), e, uri) from None
                    time.sleep(TRANSFER_BACKOFF_S[min(attempt, len(TRANSFER_BACKOFF_S)) - 1])
                    self._abort_uploads(key, self._uploads_of(key))
                else:
                    # Uploads started before this (successful) try are leftovers.
                    self._abort_uploads(key, before)
                    return
        finally:
            with self._uploads_lock:
                self._started_uploads.pop(key, None)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(self.uri_for(key)):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                # HEAD has no error body, so a missing bucket is a plain 404 here too.
                if _error_code(e) in _NOT_FOUND:
                    return False
                raise
        return True

    def read_bytes(self, key: str) -> bytes:
        with self._errors(self.uri_for(key)):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        # One PUT: S3 makes an object visible only once it is complete. Retried as a whole like a
        # transfer, so a store restart does not fail a trainer's progress or result write.
        self._transfer(self.uri_for(key),
                       lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise StoreError(f"not found: {src} (uploading to {self.uri_for(key)})")
        # Managed transfer: multipart for large files, which is also only visible on completion.
        full_key = self._key(key)
        self._transfer(self.uri_for(key),
                       lambda: self._client.upload_file(str(src), self.bucket, full_key), full_key)

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        dest = Path(local_path)
        with _os_errors(str(dest), "write"):
            dest.parent.mkdir(parents=True, exist_ok=True)
        # boto3 downloads into a temp file next to dest and renames it when complete.
        self._transfer(self.uri_for(key),
                       lambda: self._client.download_file(self.bucket, self._key(key), str(dest)))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        """Full object keys (bucket-relative) under the folder `prefix` (store-relative)."""
        folder = self._key(prefix, allow_empty=True)
        folder = f"{folder}/" if folder else ""
        with self._errors(self.uri_for(prefix)):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):  # skip "folder" marker objects
                        yield obj["Key"]

    def list_keys(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in self._iter_keys(prefix))

    def delete(self, key: str) -> None:
        with self._errors(self.uri_for(key)):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    # --- conditional writes: what a lease on an output folder is built from ------------------
    def put_if(self, key: str, data: bytes, *, absent: bool = False, etag: str | None = None) -> str | None:
        """One PUT that happens only if no object is at `key` (`absent`, If-None-Match: *) or the
        object there still has `etag` (If-Match): the new ETag, or None when the condition failed.
        ConditionalWritesUnsupported when the store does not implement them."""
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if absent else {"IfMatch": etag}
        with self._errors(self.uri_for(key)):
            try:
                resp = self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as e:
                code = _error_code(e)
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or _http_status(e) in (409, 412):
                    return None
                if code == "NotImplemented" or _http_status(e) == 501:
                    raise ConditionalWritesUnsupported(self.host) from None
                raise
        return resp.get("ETag")

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag; None when there is none."""
        from botocore.exceptions import ClientError

        with self._errors(self.uri_for(key)):
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if _error_code(e) in _NOT_FOUND:
                    return None
                raise
            return resp["Body"].read(), resp["ETag"]

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self._iter_keys(prefix))
        uri = self.uri_for(prefix)
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            with self._errors(uri):
                resp = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreError(
                    f"cannot delete {len(resp['Errors'])} objects under {uri}: "
                    f"{first.get('Code')} on s3://{self.bucket}/{first.get('Key')}"
                )


# ------------------------------------------------------------------------------------------
# URIs
# ------------------------------------------------------------------------------------------


# "scheme:" of two or more characters; a single letter is a Windows drive, i.e. a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def _scheme(uri: str) -> str:
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


def _file_path(uri: str) -> str:
    """The local path a file:// URI or plain path names (see the module docstring)."""
    if not _scheme(uri):
        return uri
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.netloc in ("", "localhost"):
        return path
    return unquote(parts.netloc) + path  # file://out/x -> out/x (relative)


def split_uri(uri: str) -> tuple[str, str]:
    """Splits a URI into (root, key) with ``open_store(root).uri_for(key)`` naming it.

    ``s3://bucket/a/b`` -> ``("s3://bucket", "a/b")``; local paths and ``file://`` URIs ->
    ``("file:///", "abs/path")`` (relative paths are made absolute first).
    """
    scheme = _scheme(uri)
    if scheme == "s3":
        parts = urlsplit(uri)
        if not parts.netloc:
            raise StoreError(f"no bucket in {uri!r}: use s3://bucket/prefix")
        return f"s3://{parts.netloc}", _clean_key(parts.path, uri, allow_empty=True)
    if scheme in ("", "file"):
        path = os.path.abspath(os.path.expanduser(_file_path(uri)))
        return "file:///", Path(path).as_posix().lstrip("/")
    raise StoreError(
        f"unsupported store URI scheme {scheme!r} in {uri!r}: use s3://, file:// or a path"
    )


def open_store(uri: str, *, endpoint: str | None = None, region: str | None = None,
               credentials: dict[str, str] | None = None,
               connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
               read_timeout: float = DEFAULT_READ_TIMEOUT_S,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Store:
    """The store rooted at uri (s3://bucket/prefix, file://..., or a local path).

    `credentials` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN) are used
    for S3 instead of the environment's. `connect_timeout`/`read_timeout` (seconds per try) and
    `max_attempts` (tries per request, counting the first) bound how long an S3 call can take;
    the defaults suit the trainer, and the operator passes shorter ones.
    """
    uri = os.fspath(uri)
    root, key = split_uri(uri)
    if root.startswith("s3://"):
        return S3Store(root[len("s3://") :], key, endpoint=endpoint, region=region,
                       credentials=credentials, connect_timeout=connect_timeout,
                       read_timeout=read_timeout, max_attempts=max_attempts)
    return FileStore("/" + key)


def materialize(
    uri: str,
    cache_dir: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    region: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Path:
    """A local path holding the file or directory at uri.

    Local URIs return the existing path itself (no copy). For s3:// the single object at uri is
    downloaded if there is one, else everything under it as a folder, to
    ``cache_dir/<bucket>/<key>``; that path is replaced as a whole, so it mirrors the store
    exactly (no stale files from an earlier download). StoreError("not found: <uri>") if
    nothing is there.
    """
    uri = os.fspath(uri)
    root, key = split_uri(uri)
    if not root.startswith("s3://"):
        path = Path("/" + key)
        if not path.exists():
            raise StoreError(f"not found: {uri}")
        return path

    bucket = root[len("s3://") :]
    store = S3Store(bucket, endpoint=endpoint, region=region, connect_timeout=connect_timeout,
                    read_timeout=read_timeout, max_attempts=max_attempts)
    dest = Path(cache_dir) / bucket / key if key else Path(cache_dir) / bucket
    if key and not uri.endswith("/") and store.exists(key):
        with _os_errors(str(dest), "replace"):
            if dest.is_dir():
                shutil.rmtree(dest)
        store.download_file(key, dest)
        return dest

    with _os_errors(str(dest), "write"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=_TMP_SUFFIX, dir=dest.parent)
        )
    try:
        if not store.list_keys(key):
            raise StoreError(f"not found: {uri}")
        store.download_tree(key, staging)
        with _os_errors(str(dest), "replace"):
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
