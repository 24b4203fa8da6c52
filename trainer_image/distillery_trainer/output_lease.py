"""A lease on an S3 output folder, so that two runs never write one output at once.

S3 has no locks, but it has conditional writes: a PUT with `If-None-Match: *` creates an object
only if there is none, and one with `If-Match: <etag>` replaces it only if nobody changed it in
between. The lease is the object `.distillery-output.lock`, `{"holder", "expires"}`:

* a run creates it if absent, and its holder renews it every RENEW_S (a daemon thread);
* a run that finds it takes it over only once it has expired (`If-Match`, so of two newcomers one
  wins). While it waits it watches the lease: renewed, or taken by someone else, means a live run,
  and it is refused (exit 2) like a local folder's flock. So a trainer pod restarted after a kill
  (which could not release its lease) waits at most LEASE_S, and a second live run is refused
  within about RENEW_S. The holder is DISTILLERY_OUTPUT_HOLDER when set (the operator names the
  job generation, so a retried pod of it takes its own lease over at once), else host:pid;
* the holder deletes it at the end; a renewal that finds the lease changed marks it lost, and the
  next write through the output refuses to go on.

A store that does not implement conditional writes gets a warning and no lease (the local
folder's flock is unaffected; in the cluster one job generation has one trainer Job anyway).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from distillery.store import ConditionalWritesUnsupported, S3Store, StoreError
from distillery_trainer.errors import InputError

LEASE_S = 90.0
RENEW_S = 30.0
POLL_S = 5.0


@dataclass(frozen=True)
class LeaseState:
    holder: str
    expires: float

    def encode(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires": round(self.expires, 3)}).encode()

    @staticmethod
    def decode(data: bytes) -> LeaseState | None:
        """None for anything that is not a lease (a damaged lock is treated as expired)."""
        try:
            body = json.loads(data.decode("utf-8"))
            return LeaseState(str(body["holder"]), float(body["expires"]))
        except (UnicodeDecodeError, ValueError, TypeError, KeyError):
            return None


class Lease:
    """A held lease; renews itself until released."""

    def __init__(self, store: S3Store, key: str, holder: str, etag: str, lease_s: float, renew_s: float,
                 clock: Callable[[], float]):
        self.store, self.key, self.holder, self.etag = store, key, holder, etag
        self.lease_s, self.renew_s, self.clock = lease_s, renew_s, clock
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="output-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        etag = self.store.put_if(self.key, LeaseState(self.holder, self.clock() + self.lease_s).encode(),
                                 etag=self.etag)
        if etag is None:
            self.lost = True
        else:
            self.etag = etag

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s) and not self.lost:
            # An unreachable store: try again next time (the lease outlasts two missed renewals).
            with contextlib.suppress(StoreError):
                self.renew()

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.lost:
            return
        try:  # delete only our own lease (a tiny race with a takeover after expiry is harmless)
            current = self.store.read_with_etag(self.key)
            if current is not None and current[1] == self.etag:
                self.store.delete(self.key)
        except StoreError:
            pass  # it expires on its own


def default_holder() -> str:
    return os.environ.get("DISTILLERY_OUTPUT_HOLDER") or f"{socket.gethostname()}:{os.getpid()}"


def acquire(store: S3Store, key: str, uri: str, *, holder: str | None = None, clock: Callable[[], float] = time.time,
            sleep: Callable[[float], None] = time.sleep) -> Lease | None:
    """The lease on the output at `uri` (None when the store cannot do conditional writes).
    InputError when another live run holds it. Timings: the module's LEASE_S, RENEW_S, POLL_S."""
    holder = holder or default_holder()
    lease_s, renew_s, poll_s = LEASE_S, RENEW_S, POLL_S
    first_seen: LeaseState | None = None
    said = False
    try:
        while True:
            mine = LeaseState(holder, clock() + lease_s).encode()
            etag = store.put_if(key, mine, absent=True)
            if etag is not None:
                return Lease(store, key, holder, etag, lease_s, renew_s, clock)
            current = store.read_with_etag(key)
            if current is None:
                continue  # released meanwhile: try to create it again
            state, their_etag = LeaseState.decode(current[0]), current[1]
            now = clock()
            if state is None or state.expires <= now or state.holder == holder:
                etag = store.put_if(key, mine, etag=their_etag)
                if etag is not None:
                    return Lease(store, key, holder, etag, lease_s, renew_s, clock)
                continue  # another newcomer took it first: look again
            if first_seen is None:
                first_seen = state
            elif state != first_seen:
                raise InputError(f"output.uri: {uri} is in use by another run ({state.holder})")
            if not said:
                print(f"[distillery] output.uri: {uri} is leased by {state.holder} for {state.expires - now:.0f} s "
                      "more; waiting to see whether that run is alive", file=sys.stderr, flush=True)
                said = True
            sleep(min(poll_s, max(state.expires - now, 0.0) + 0.5))
    except ConditionalWritesUnsupported:
        print(f"[distillery] warning: the S3 store at {store.host} does not implement conditional writes; "
              f"two runs on {uri} are not prevented", file=sys.stderr, flush=True)
        return None
