"""Which sender replica delivers to which destination.

Two layers, both in PostgreSQL:

* **Membership** — every replica upserts a heartbeat row in ``sender.replicas``
  every ``heartbeat_interval``; the live ones (heartbeat within
  ``lease_seconds``) form a list every replica can read. A destination's
  *preferred* replica is chosen by rendezvous hashing over that list (highest
  ``sha256(replica, destination)``), so each replica takes about 1/N of the
  destinations, and adding or removing a replica moves only the destinations
  that hash to it.
* **Leases** — preference is only advice: replicas can briefly disagree on the
  list. A replica delivers to a destination only while it holds the
  destination's lease (``destinations.lease_owner`` / ``lease_expires_at``,
  database clock). A lease is taken only when free or expired, with
  ``FOR UPDATE SKIP LOCKED``, and the heartbeat renews every lease its replica
  holds in one statement (those it gave up are not renewed, even when giving one
  back failed: it expires); a replica that dies stops renewing and its leases
  expire after ``lease_seconds``. A replica that restarts under the same
  name (``instance_name``: host or pod name) takes its previous run's leases
  back when it starts, and a clean stop gives them back, so only a replica
  gone for good leaves its destinations waiting for the expiry. Each new
  transaction is built under the destination row's lock after checking the
  lease in the same database transaction, so two replicas never start
  transactions for one destination.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from mxfed.held_connection import log_failure
from services.sender.storage import SenderStorage

log = logging.getLogger(__name__)

LEASE_SECONDS = 12.0
HEARTBEAT_INTERVAL = 3.0


def preferred_replica(destination: str, replicas: list[str]) -> str | None:
    """Rendezvous (highest random weight) choice of ``destination``'s replica."""
    if not replicas:
        return None
    return max(
        replicas,
        key=lambda replica: hashlib.sha256(f"{replica}\0{destination}".encode()).digest(),
    )


class Membership:
    """This replica's view of the live replicas and of the leases it holds."""

    def __init__(
        self,
        storage: SenderStorage,
        instance_id: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.storage = storage
        self.instance_id = instance_id
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval
        self.replicas: list[str] = [instance_id]
        self.held: set[str] = set()
        # Releases are gathered (a thousand idle destinations give their
        # leases back in one statement); claims wait for a release in progress
        # so that a destination claimed again is never released after it.
        self._to_release: dict[str, list[asyncio.Future[None]]] = {}
        self._releasing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self, name: str) -> int:
        """Join under ``name`` (stable across restarts), taking back at once the leases of
        this name's earlier incarnations; returns how many were taken back."""
        taken = await self.storage.take_over(self.instance_id, name)
        if taken:
            log.info(
                "took back the leases of this replica's previous run",
                extra={"replica": name, "leases": taken},
            )
        return taken

    def is_mine(self, destination: str) -> bool:
        return preferred_replica(destination, self.replicas) == self.instance_id

    async def beat(self) -> tuple[list[str], set[str]]:
        """One heartbeat: refresh the replica list and renew our leases."""
        replicas = await self.storage.heartbeat(self.instance_id, self.lease_seconds)
        if self.instance_id not in replicas:
            replicas = sorted([*replicas, self.instance_id])
        if replicas != self.replicas:
            log.info("sender replicas changed", extra={"replicas": replicas})
        self.replicas = replicas
        asked = set(self.held)
        renewed = await self.storage.renew(self.instance_id, self.lease_seconds, sorted(asked))
        # Lost: asked for and not renewed; claimed meanwhile: kept; released meanwhile: gone.
        self.held = (self.held - asked) | (self.held & renewed)
        return replicas, self.held

    async def run(self, on_beat: Callable[[], Awaitable[None]]) -> None:
        """Heartbeat forever; ``on_beat`` runs after each one (rebalancing)."""
        while True:
            try:
                await self.beat()
                await on_beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, "sender heartbeat failed", exc)
            await asyncio.sleep(self.heartbeat_interval)

    async def claim(self, destinations: list[str]) -> list[str]:
        async with self._lock:
            claimed = await self.storage.claim(self.instance_id, destinations, self.lease_seconds)
            self.held.update(claimed)
            # Claimed again before its release went out: keep it.
            for destination in claimed:
                for future in self._to_release.pop(destination, []):
                    if not future.done():
                        future.set_result(None)
        return claimed

    async def release(self, destination: str) -> None:
        """Give the lease back (gathered with other releases into one statement)."""
        self.held.discard(destination)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_release.setdefault(destination, []).append(future)
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.create_task(self._release_pending())
        await future

    async def _release_pending(self) -> None:
        await asyncio.sleep(0)  # let the other workers stopping now join in
        while self._to_release:
            async with self._lock:
                batch, self._to_release = self._to_release, {}
                names = [d for d in batch if d not in self.held]
                try:
                    if names:
                        await self.storage.release_many(self.instance_id, names)
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_result(None)

    async def leave(self) -> None:
        self.held.clear()
        await self.storage.leave(self.instance_id)
