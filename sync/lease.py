"""One sync run per tenant and resource: a Redis lease renewed while the run is alive.

The lease expires `SYNC_LEASE_SECONDS` after its last renewal, so a killed run blocks nobody for
longer; a thread renews it every third of that while the run lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from types import TracebackType

from django.conf import settings
from django.utils import timezone

from addon_project.redis_client import RELEASE_LOCK, get_redis, lua
from addon_project.redis_keys import sync_lease_key

# KEYS[1] the lease; ARGV[1] owner; ARGV[2] ttl ms. Extends it only while we still own it.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

logger = logging.getLogger(__name__)


class LeaseHeld(Exception):
    """Another run holds the lease; the message names it."""


def holder_of(eshop_id: int, resource: str) -> str | None:
    value = get_redis().get(sync_lease_key(eshop_id, resource))
    return _holder(value) if value else None


def _holder(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text.split("|", 1)[-1]


class Lease:
    """`with Lease(eshop_id, "orders", wait=5):` — raises `LeaseHeld` if another run keeps it."""

    def __init__(self, eshop_id: int, resource: str, *, wait: float = 0.0) -> None:
        self.key = sync_lease_key(eshop_id, resource)
        self.wait = wait
        self.ttl_ms = int(settings.SYNC_LEASE_SECONDS * 1000)
        holder = f"{socket.gethostname()} pid {os.getpid()} since {timezone.now():%Y-%m-%d %H:%M:%S} UTC"
        self.owner = f"{uuid.uuid4().hex}|{holder}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        r = get_redis()
        deadline = time.monotonic() + self.wait
        while not r.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            if time.monotonic() >= deadline:
                value = r.get(self.key)
                holder = _holder(value) if value else "another run"
                raise LeaseHeld(f"another sync run holds it: {holder}")
            time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(
            target=self._renew, name=f"sync-lease {self.key}", daemon=True
        )
        self._thread.start()

    def _renew(self) -> None:
        script = lua(RENEW_LEASE)
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                renewed = script(
                    keys=[self.key], args=[self.owner, self.ttl_ms], client=get_redis()
                )
            except Exception:  # a Redis hiccup: try again next round
                logger.warning("sync lease %s: renewal failed; retrying", self.key)
                continue
            if not renewed:
                self.lost.set()  # expired or taken over: the run must stop at its next step
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # it expires on its own
            lua(RELEASE_LOCK)(keys=[self.key], args=[self.owner], client=get_redis())

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
