"""The sender as its own process (``mxfed run --service sender``), killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfed.database_claim import record_signing_key
from mxfed.identity_files import ServerSigningKey, format_signing_key
from services.sender.storage import SenderStorage
from tests.support.grpc_plane import channel_to, session_tls_dir
from tests.support.polling import wait_until
from tests.support.ports import HeldPort
from tests.support.sender_queues import OUR_SERVER


class SenderProcess:
    def __init__(self, directory: Path, database_url: str, events_address: str) -> None:
        self.directory = directory
        # Held for the whole test, so a restarted replica listens where it did before.
        self.held_port = HeldPort()
        self.port = self.held_port.port
        self.config = directory / f"sender-{self.port}.yaml"
        self.log = directory / f"sender-{self.port}.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "server_name": OUR_SERVER,
                    "data_dir": str(directory),
                    "database_url": database_url,
                    "signing_key_path": str(directory / "signing.key"),
                    "sender_listen": f"127.0.0.1:{self.port}",
                    "sender_metrics_listen": "127.0.0.1:0",
                    "listen_reuse_port": True,
                    "events_address": events_address,
                    "federation_verify_tls": False,
                    "federation_allowed_ip_ranges": ["127.0.0.0/8"],
                    "federation_request_timeout": 10,
                    "sender_min_retry_interval": 0.3,
                    "sender_max_retry_interval": 2,
                    "log_format": "text",
                    "internal_tls_dir": str(session_tls_dir()),
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SenderProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
        env.pop("DATABASE_URL", None)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mxfed.cli",
                "--config",
                str(self.config),
                "run",
                "--service",
                "sender",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        return self

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with channel_to(f"127.0.0.1:{self.port}", "sender") as channel:
            while time.monotonic() < deadline:
                assert self.process and self.process.poll() is None, self.log.read_text()
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def kill(self) -> None:
        """SIGKILL, by PID: no cleanup of any kind."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class SenderProcesses:
    def __init__(self, directory: Path, database_url: str, events_address: str) -> None:
        self.args = (directory, database_url, events_address)
        self.started: list[SenderProcess] = []

    def make(self) -> SenderProcess:
        process = SenderProcess(*self.args)
        self.started.append(process)
        return process


@pytest.fixture
async def sender_processes(
    tmp_path: Path,
    database_url: str,
    sender_storage: SenderStorage,
    our_key: ServerSigningKey,
    fake_events,
) -> AsyncIterator[SenderProcesses]:
    (tmp_path / "signing.key").write_text(format_signing_key(our_key))
    # The session database is shared with in-process parts of the same server name that
    # were given other keys; recording this key (as a rotation would) lets the processes
    # start against it instead of being refused as another server.
    await record_signing_key(sender_storage.pool, our_key)
    processes = SenderProcesses(tmp_path, database_url, fake_events.address)
    yield processes
    for process in processes.started:
        process.stop()
        process.held_port.release()


async def test_sigkill_mid_transaction_then_restart_loses_and_duplicates_nothing(
    sender_storage: SenderStorage, fake_events, receiver_factory, sender_processes
) -> None:
    receiver = await receiver_factory()
    first = sender_processes.make().start()
    await first.wait_ready()
    receiver.delay = 2.0
    ids = [f"k{i}" for i in range(70)]
    for pdu_id in ids:
        await fake_events.add_event(pdu_id, [OUR_SERVER, receiver.server_name])
    await wait_until(lambda: len(receiver.arrived) == 1, timeout=15)
    first.kill()  # while the receiver is still working on the transaction
    await wait_until(lambda: len(receiver.delivered) == 1, timeout=30)
    receiver.delay = 0
    in_flight = receiver.arrived[0]

    second = sender_processes.make().start()
    await second.wait_ready()
    # The dead process's lease expires (~12 s); then the same transaction comes again.
    await wait_until(lambda: receiver.pdu_ids() == ids, timeout=40)
    assert receiver.arrived.count(in_flight) == 2
    assert receiver.bad_signatures == 0
    assert len(receiver.pdu_ids()) == len(set(receiver.pdu_ids()))
    assert await sender_storage.pool.fetchval(
        "SELECT stream_position FROM sender.ingest_cursor"
    ) == len(ids)


async def test_two_sender_processes_one_killed_the_other_delivers_its_share(
    sender_storage: SenderStorage, fake_events, receiver_factory, sender_processes
) -> None:
    # Destinations are spread by rendezvous hashing over the replicas' random names: with
    # sixteen, both replicas get a share except with probability 2**-15.
    receivers = [await receiver_factory() for _ in range(16)]
    for receiver in receivers:
        await receiver.go_down()
    one = sender_processes.make().start()
    two = sender_processes.make().start()
    await one.wait_ready()
    await two.wait_ready()
    names = [r.server_name for r in receivers]
    ids = [f"p{i}" for i in range(5)]
    for pdu_id in ids:
        await fake_events.add_event(pdu_id, names)

    async def owners() -> set[str]:
        rows = await sender_storage.pool.fetch(
            "SELECT DISTINCT lease_owner FROM sender.destinations WHERE lease_owner IS NOT NULL"
        )
        return {r["lease_owner"] for r in rows}

    deadline = time.monotonic() + 60
    while len(await owners()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    before = await owners()
    assert len(before) == 2, before
    one.kill()
    for receiver in receivers:
        await receiver.come_back()
    for receiver in receivers:
        await wait_until(lambda r=receiver: r.pdu_ids() == ids, timeout=40)
    assert len(await owners()) <= 1
