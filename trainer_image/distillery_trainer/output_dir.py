"""The output folder is the user's: Distillery writes, replaces and deletes only its own files.

Where the pipeline calls it: ``pipeline.run`` opens the output with

    store = open_output(job, allow_nonempty=allow_nonempty_output)
    try:
        ...  # everything else, including `--restart`'s deletes and the "already finished" check
    finally:
        store.close()

instead of ``open_store(spec.output.uri, ...)``, before anything is read from or written to the
output. The returned store is an ordinary :class:`~distillery.store.Store`:

* every key written through it is listed in ``.distillery-output.json`` (the marker) before it is
  written, so a folder with the marker is one Distillery created, and the marker says which of
  its files are Distillery's;
* ``delete`` and ``delete_prefix`` remove only listed keys, so ``--restart`` (which deletes
  ``checkpoints/``, ``cache/`` and ``result.json``) never touches a file the user put there;
* writing ``result.json`` (always the last artifact) first removes the student files of an
  earlier run of ours that this run did not write again (``model/...``, ``model.int8.onnx``),
  so no stale model stays beside the new one.

Opening refuses (InputError, exit 2): a non-empty folder without the marker, unless
``allow_nonempty`` (``--allow-nonempty-output``); a folder holding a file at a name Distillery
writes (``README.md``, ``metrics.json``, ...) or inside the student folder ``model/`` that the
marker does not list, always (it would be overwritten, or mixed into the student); an unwritable local folder; and, for local folders, a folder another run is using:
the run holds ``fcntl.flock`` on ``.distillery-output.lock`` (with its pid inside) until it ends;
on S3 the same name is a lease made of conditional writes (output_lease.py): a second live run is
refused, a run killed without releasing it holds it back at most LEASE_S.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from pathlib import Path

from distillery.api.job import DistillationJob
from distillery.api.result import RESULT_KEY
from distillery.store import S3Store, Store, StoreError, open_store
from distillery_trainer import output_lease
from distillery_trainer.errors import InputError

MARKER = ".distillery-output.json"
LOCK = ".distillery-output.lock"
MARKER_KIND = "distillery-output"
# Files a run writes at fixed names: one the marker does not list would be overwritten.
FIXED_NAMES = ("result.json", "metrics.json", "README.md", "progress.json", "model.onnx", "model.int8.onnx",
               "checkpoints/latest.json")
# The student's files: replaced as a set when a new result is written.
STUDENT_FILES = ("model/", "model.onnx", "model.int8.onnx")
_BOOKKEEPING = (MARKER, LOCK)


def _norm(key: str) -> str:
    return "/".join(p for p in str(key).split("/") if p)


def _under(key: str, prefix: str) -> bool:
    prefix = _norm(prefix)
    return not prefix or key == prefix or key.startswith(prefix + "/")


def _is_student_file(key: str) -> bool:
    return any(key.startswith(name) if name.endswith("/") else key == name for name in STUDENT_FILES)


class OwnedStore(Store):
    """The output store, seen through the list of keys Distillery wrote there."""

    def __init__(self, inner: Store, owned: set[str], lock_fd: int | None = None,
                 lease: output_lease.Lease | None = None):
        self.inner = inner
        self.root_uri = inner.root_uri
        self.owned = set(owned)
        self.written: set[str] = set()  # keys written by this run
        self._lock_fd = lock_fd
        self._lease = lease
        self._mutex = threading.Lock()

    # --- bookkeeping ------------------------------------------------------------------------
    def _save_marker(self) -> None:
        body = {"kind": MARKER_KIND, "version": 1,
                "note": "written by Distillery: the files it wrote here; it never touches others",
                "files": sorted(self.owned)}
        self.inner.write_json(MARKER, body)

    def _claim(self, key: str) -> str:
        key = _norm(key)
        if self._lease is not None and self._lease.lost:
            raise InputError(f"output.uri: {self.root_uri} was taken over by another run while this one could not "
                             "renew its lease; stopping rather than mixing two runs' files")
        with self._mutex:
            self.written.add(key)
            if key not in self.owned and key not in _BOOKKEEPING:
                self.owned.add(key)
                self._save_marker()  # listed before written: a crash leaves no unlisted file of ours
        return key

    def _release(self, keys: list[str]) -> None:
        with self._mutex:
            self.owned.difference_update(keys)
            self.written.difference_update(keys)
            self._save_marker()
        self._remove_empty_folders(keys)

    def _remove_empty_folders(self, keys: list[str]) -> None:
        """Local folders our deletes left empty go too (S3 has no folders): a deleted checkpoint
        step leaves nothing behind, while a folder still holding a user's file stays."""
        root = self.inner.local_path("")
        if root is None:
            return
        folders = {parent for key in keys for parent in (root / key).parents if parent != root and root in parent.parents}
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()

    def remove_stale_student_files(self) -> None:
        """Deletes student files of ours from an earlier run that this run did not write."""
        stale = sorted(k for k in self.owned if _is_student_file(k) and k not in self.written)
        for key in stale:
            self.inner.delete(key)
        if stale:
            self._release(stale)

    def close(self) -> None:
        """Releases the lock (the process's exit releases a local one too; an S3 lease expires)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> OwnedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reads pass through -----------------------------------------------------------------
    def uri_for(self, key: str) -> str:
        return self.inner.uri_for(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(key)

    def download_file(self, key: str, local_path) -> None:
        self.inner.download_file(key, local_path)

    def list_keys(self, prefix: str = "") -> list[str]:
        return self.inner.list_keys(prefix)

    def local_path(self, key: str = "") -> Path | None:
        return self.inner.local_path(key)

    # --- writes are claimed first -----------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        if _norm(key) == RESULT_KEY:
            self.remove_stale_student_files()
        self.inner.write_bytes(self._claim(key), data)

    def upload_file(self, local_path, key: str) -> None:
        self.inner.upload_file(local_path, self._claim(key))

    # --- deletes touch only our own keys ----------------------------------------------------
    def delete(self, key: str) -> None:
        key = _norm(key)
        if key in self.owned:
            self.inner.delete(key)
            self._release([key])

    def delete_prefix(self, prefix: str) -> None:
        ours = sorted(k for k in self.owned if _under(k, prefix))
        for key in ours:
            self.inner.delete(key)
        if ours:
            self._release(ours)  # also removes the local folders this left empty



# ----------------------------------------------------------------------------- opening


def read_marker(store: Store) -> set[str] | None:
    """The keys the marker lists; None when there is no marker. A damaged marker is refused
    rather than guessed at, since it decides what may be deleted."""
    if not store.exists(MARKER):
        return None
    where = f"output.uri: {store.uri_for(MARKER)}"
    try:
        body = json.loads(store.read_bytes(MARKER).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{where} is damaged (not JSON); remove it only if this folder is not a "
                         "Distillery output") from None
    files = body.get("files") if isinstance(body, dict) and body.get("kind") == MARKER_KIND else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise InputError(f"{where} is not a Distillery output marker")
    keys = {_norm(f) for f in files}
    if any(part in (".", "..") for key in keys for part in key.split("/")) or "" in keys:
        raise InputError(f"{where} lists a path outside the output folder")
    return keys


def check_ownership(store: Store, owned: set[str] | None, allow_nonempty: bool) -> None:
    present = [k for k in store.list_keys("") if k not in _BOOKKEEPING]
    uri = store.uri_for("")
    if owned is None and present and not allow_nonempty:
        raise InputError(
            f"output.uri: {uri} is not empty and was not created by Distillery (no {MARKER}); use an empty "
            "or new folder, or --allow-nonempty-output to write beside the files there")
    ours = owned or set()
    clashes = [k for k in present if k not in ours and (k in FIXED_NAMES or _is_student_file(k))]
    if clashes:
        raise InputError(
            f"output.uri: {uri} holds {', '.join(sorted(clashes)[:5])} not written by Distillery; move "
            f"{'it' if len(clashes) == 1 else 'them'} away (Distillery never overwrites files it did not write)")


def _not_writable(uri: str, err: OSError) -> InputError:
    return InputError(f"output.uri: {uri} is not writable ({os.strerror(err.errno) if err.errno else err})")


def lock_local(folder: Path, uri: str) -> int:
    """Takes the run's lock on a local output folder; the pid inside names the holder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise InputError(f"output.uri: {uri} is a file, not a folder") from None
    except OSError as err:
        raise _not_writable(uri, err) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            pid = holder if holder.isdigit() else "unknown"
            raise InputError(f"output.uri: {uri} is in use by another run (pid {pid})") from None
        raise _not_writable(uri, err) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise _not_writable(uri, err) from None
    return fd


def open_output(job: DistillationJob, *, allow_nonempty: bool = False) -> OwnedStore:
    """The job's output store, claimed for this run (see the module docstring). `--restart`'s
    deletes are the caller's, through the returned store, which removes only what it wrote."""
    out = job.spec.output
    inner = open_store(out.uri, endpoint=out.endpoint, region=out.region)
    uri = inner.uri_for("")
    folder = inner.local_path("")
    if folder is not None and folder.exists() and not folder.is_dir():
        raise InputError(f"output.uri: {uri} is a file, not a folder")
    # Checked before the lock file is created, so a refused folder is left exactly as it was.
    check_ownership(inner, read_marker(inner), allow_nonempty)
    fd = lock_local(folder, uri) if folder is not None else None
    lease = output_lease.acquire(inner, LOCK, uri) if isinstance(inner, S3Store) else None
    try:
        owned = read_marker(inner)  # again, under the lock: another run may have just finished
        check_ownership(inner, owned, allow_nonempty)
        store = OwnedStore(inner, owned or set(), fd, lease)
        try:
            store._save_marker()  # also proves the folder writable before any heavy work
        except StoreError as err:
            if folder is not None:  # a local folder we cannot write will not become writable
                raise InputError(f"output.uri: {uri} is not writable ({err})") from None
            raise
        return store
    except BaseException:
        if fd is not None:
            os.close(fd)
        if lease is not None:
            lease.release()
        raise
