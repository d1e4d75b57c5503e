"""Fixtures for the sender service: its schema on the test database, receivers
that check our signatures, and in-process sender replicas."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from mxfed.database import apply_migrations, create_pool
from mxfed.federation_client import FederationClient, OutboundOptions
from mxfed.identity_files import ServerSigningKey, new_signing_key
from mxfed.service_runtime import migrations_directory
from services.sender.backoff import BackoffPolicy
from services.sender.delivery import DeliveryManager, DeliveryOptions, FederationTransport
from services.sender.leases import Membership
from services.sender.server import listen_for_wakes
from services.sender.storage import SenderStorage
from tests.services.sender.receivers import Receiver
from tests.support.databases import truncate
from tests.support.sender_queues import OUR_SERVER

SENDER_TABLES = (
    "sender.pdus, sender.pdu_queue, sender.edu_queue, sender.destinations, sender.replicas"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: runs against a real Synapse homeserver")


@pytest.fixture(scope="session")
async def sender_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=10)
    await apply_migrations(pool, "sender", migrations_directory("sender"))
    yield pool
    await pool.close()


@pytest.fixture
async def sender_storage(sender_pool: asyncpg.Pool) -> SenderStorage:
    await truncate(sender_pool, SENDER_TABLES)
    await sender_pool.execute("UPDATE sender.ingest_cursor SET stream_position = 0")
    return SenderStorage(sender_pool)


@pytest.fixture(scope="session")
def our_key() -> ServerSigningKey:
    return new_signing_key()


@pytest.fixture
async def receiver_factory(
    our_key: ServerSigningKey,
) -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def start() -> Receiver:
        receiver = await Receiver(OUR_SERVER, our_key.signing_key.verify_key).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


def test_options(request_timeout: float = 5.0) -> OutboundOptions:
    return OutboundOptions(
        verify_tls=False,
        allowed_ip_ranges=["127.0.0.0/8"],
        request_timeout=request_timeout,
        connect_timeout=2,
        max_retries=0,
    )


STOP_TIMEOUT = 30.0


@dataclass
class Replica:
    """A sender replica's delivery side, in this process."""

    storage: SenderStorage
    key: ServerSigningKey
    instance_id: str
    database_url: str
    policy: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(300, 3000))
    options: DeliveryOptions = field(
        default_factory=lambda: DeliveryOptions(
            idle_linger=0.5, scan_interval=0.5, maintenance_interval=3600
        )
    )
    lease_seconds: float = 3.0
    request_timeout: float = 5.0
    heartbeat_interval: float = 0.3
    # Stable across restarts (instance_name); None: no name, leases expire only.
    name: str | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def start(self) -> Replica:
        client = FederationClient(
            OUR_SERVER,
            self.key.signing_key,
            self.key.key_id,
            test_options(self.request_timeout),
        )
        self.transport = FederationTransport(OUR_SERVER, client)
        self.membership = Membership(
            self.storage,
            self.instance_id,
            lease_seconds=self.lease_seconds,
            heartbeat_interval=self.heartbeat_interval,
        )
        self.manager = DeliveryManager(
            self.storage, self.membership, self.transport, self.policy, self.options
        )
        if self.name is not None:
            await self.membership.start(self.name)
        await self.membership.beat()
        self.tasks = [
            asyncio.create_task(self.membership.run(self.manager.on_heartbeat)),
            asyncio.create_task(self.manager.run()),
            asyncio.create_task(listen_for_wakes(self.database_url, self.manager)),
        ]
        return self

    async def crash(self) -> None:
        """Stop without giving anything back (leases expire by themselves)."""
        for task in self.tasks:
            task.cancel()
        for worker in list(self.manager.workers.values()):
            worker.lease_lost = True  # do not release on the way out
            if worker.task:
                worker.task.cancel()
        await asyncio.gather(
            *self.tasks,
            *(w.task for w in self.manager.workers.values() if w.task),
            return_exceptions=True,
        )
        await self.transport.close()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        # Each step is bounded. A slow stop is reported as a warning naming the
        # step rather than failing the test that ran before it; leases expire by
        # themselves. (Seen rarely on a loaded machine while the services waited
        # with asyncio.wait_for, which could lose the cancellation: mxfed.waits.)
        for step, awaitable in (
            ("tasks", asyncio.gather(*self.tasks, return_exceptions=True)),
            ("delivery", self.manager.close()),
            ("leases", self.membership.leave()),
            ("transport", self.transport.close()),
        ):
            try:
                await asyncio.wait_for(awaitable, STOP_TIMEOUT)
            except TimeoutError:
                warnings.warn(
                    f"{self.instance_id} did not stop: {step} took over {STOP_TIMEOUT} s",
                    stacklevel=1,
                )


@pytest.fixture
async def replica_factory(
    sender_storage: SenderStorage, our_key: ServerSigningKey, database_url: str
) -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    started: list[Replica] = []
    names = itertools.count(1)

    async def start(**kwargs: Any) -> Replica:
        replica = await Replica(
            sender_storage, our_key, f"replica-{next(names)}", database_url, **kwargs
        ).start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def fake_events() -> AsyncIterator[Any]:
    from tests.services.sender.fake_events import FakeEvents

    events = await FakeEvents().start()
    yield events
    await events.stop()
