"""A whole mxfed under steady federation traffic both ways, and the faults of a bad day.

Used by ``tests/test_fault_injection.py`` (one round, bounded) and
``bench/bench_faults.py`` (more rounds, recovery times). The stack is a real
``mxfed run`` on a PostgreSQL of its own (:class:`OwnPostgres`), a remote
homeserver (:class:`Receiver`) joined to one room, and two loads:

- **inbound**: the remote sends one-PDU transactions to ``/send`` and, like a
  real sender, retries the same transaction until it gets a 200; every PDU
  answered 200 without an error must be stored, once.
- **outbound**: a local actor sends events with ``PerformSendEvent`` (with a
  txn id, retried until acknowledged); every acknowledged event must reach the
  remote, once.

Faults: SIGKILL of each part (the supervisor restarts it), the remote gone
for a while, ``pg_terminate_backend`` of every mxfed connection, and a
PostgreSQL restart. After each, the recovery time is when inbound got a 200
again, an event acknowledged after the fault reached the remote, and every
part reported SERVING.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import orjson
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matrix_protocol.auth_events import select_auth_event_ids
from mxfed.identity_files import parse_signing_key
from mxfed_api.events.v1 import events_pb2
from tests.services.sender.receivers import Receiver
from tests.support.mxfed_process import PARTS, MxfedProcess
from tests.support.own_postgres import OwnPostgres
from tests.support.ports import HeldPort
from tests.support.scene import Room, Scene

ALL_PARTS = (*PARTS, "gateway")


@dataclass
class FaultResult:
    fault: str
    recovery_seconds: float
    inbound_seconds: float
    outbound_seconds: float
    serving_seconds: float


@dataclass
class Loads:
    """What the loads saw: answers by status, what was acknowledged."""

    inbound_accepted: list[str] = field(default_factory=list)  # event ids answered 200 {}
    inbound_ok_at: list[float] = field(default_factory=list)
    inbound_statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    inbound_refused: dict[str, Any] = field(default_factory=dict)
    outbound_acked: list[tuple[float, str]] = field(default_factory=list)  # (when, content id)
    outbound_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    retry_after: set[str] = field(default_factory=set)


class FaultStack:
    """mxfed + its own PostgreSQL + a joined remote, with the loads and the faults."""

    def __init__(
        self, directory: Path, *, interval: float = 0.05, second_events: bool = False
    ) -> None:
        self.directory = directory
        self.interval = interval
        # A second events replica (a process of its own) that every caller also uses.
        self.second_events = second_events
        self.second: subprocess.Popen[bytes] | None = None
        self.loads = Loads()
        self.results: list[FaultResult] = []
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    # Start and stop --------------------------------------------------------------

    async def start(self) -> None:
        self.postgres = await asyncio.to_thread(OwnPostgres, self.directory)
        self.database_url = await self.postgres.database()
        self.mxfed = MxfedProcess(
            self.directory / "mxfed",
            self.database_url,
            single_process=False,  # its faults include SIGKILL of each part process
            extra_config={
                "sender_min_retry_interval": 0.5,
                "sender_max_retry_interval": 2,
                "sender_lease_seconds": 6,
            },
        )
        if self.second_events:
            self._second_port = HeldPort()
            self._second_metrics = HeldPort()
            first = self.mxfed.ports["events"]
            self.mxfed.extra_config["events_address"] = (
                f"ipv4:127.0.0.1:{first},127.0.0.1:{self._second_port.port}"
            )
        await asyncio.to_thread(self.mxfed.start, 90)
        if self.second_events:
            await self.start_second_events()
        key = parse_signing_key((self.directory / "mxfed" / "signing.key").read_text())
        self.receiver = await Receiver(self.mxfed.server_name, key.signing_key.verify_key).start()
        self.scene = Scene(self.mxfed, self.receiver.fake)
        self.room: Room = await self.scene.create_room()
        self.bob = self.receiver.fake.user("bob")
        await self.scene.join(self.room, self.bob)
        state = await self.scene.current_state(self.room.room_id)
        info = await self.scene.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=self.room.room_id), timeout=10
        )
        self._prev = list(info.forward_extremities)
        self._depth = info.max_depth
        self._auth = select_auth_event_ids(
            "m.room.message", self.bob, None, {}, self.room.version, state
        )

    def start_loads(self) -> None:
        self._tasks = [
            asyncio.create_task(self._inbound(), name="inbound-load"),
            asyncio.create_task(self._outbound(), name="outbound-load"),
        ]

    async def stop_loads(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        self._stopping = True
        self.kill_second_events()
        if self.second_events:
            self._second_port.release()
            self._second_metrics.release()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if hasattr(self, "scene"):
            await self.scene.close()
        if hasattr(self, "receiver"):
            await self.receiver.stop()
        if hasattr(self, "mxfed"):
            await asyncio.to_thread(self.mxfed.stop)
        if hasattr(self, "postgres"):
            await asyncio.to_thread(self.postgres.close)

    # Loads -----------------------------------------------------------------------

    async def _inbound(self) -> None:
        number = 0
        while not self._stopping:
            number += 1
            event_id, pdu = self.receiver.fake.build_pdu(
                self.room.version,
                room_id=self.room.room_id,
                sender=self.bob,
                event_type="m.room.message",
                content={"msgtype": "m.text", "body": f"in {number}", "id": f"in{number}"},
                prev_events=self._prev,
                auth_events=self._auth,
                depth=self._depth + 1,
            )
            txn_id = f"in-{number}"
            while not self._stopping:  # the same transaction until it is answered 200
                try:
                    response = await asyncio.wait_for(
                        self.scene.send([pdu], txn_id=txn_id), timeout=20
                    )
                except (httpx.HTTPError, OSError, TimeoutError) as exc:
                    self.loads.inbound_statuses[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)
                    continue
                self.loads.inbound_statuses[str(response.status_code)] += 1
                if response.status_code != 200:
                    if "retry-after" in response.headers:
                        self.loads.retry_after.add(response.headers["retry-after"])
                    await asyncio.sleep(0.2)
                    continue
                result = response.json().get("pdus", {}).get(event_id)
                if result == {}:
                    self.loads.inbound_accepted.append(event_id)
                    self.loads.inbound_ok_at.append(time.monotonic())
                    self._prev = [event_id]
                    self._depth += 1
                else:
                    self.loads.inbound_refused[event_id] = result
                break
            await asyncio.sleep(self.interval)

    async def _outbound(self) -> None:
        number = 0
        while not self._stopping:
            number += 1
            content_id = f"out{number}"
            request = events_pb2.PerformSendEventRequest(
                room_id=self.room.room_id,
                sender=self.room.creator,
                type="m.room.message",
                content_json=orjson.dumps({"msgtype": "m.text", "body": "out", "id": content_id}),
                txn_id=f"out-{number}",
            )
            while not self._stopping:  # a local actor retries with the same txn id
                try:
                    await self.scene.events.PerformSendEvent(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    self.loads.outbound_errors[exc.code().name] += 1
                    await asyncio.sleep(0.2)
                    continue
                self.loads.outbound_acked.append((time.monotonic(), content_id))
                break
            await asyncio.sleep(self.interval)

    # Conditions ------------------------------------------------------------------

    def delivered(self) -> collections.Counter[str]:
        return collections.Counter(self.receiver.pdu_ids())

    async def all_serving(self) -> bool:
        for part in PARTS:
            async with self.mxfed.channel(part) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return False
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
        try:
            async with httpx.AsyncClient(verify=False, timeout=2) as client:
                response = await client.get(f"{self.mxfed.federation_url}/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def recovered_after(self, fault: str, since: float, timeout: float = 90.0) -> FaultResult:
        """Wait for inbound 200s, an outbound event acknowledged after ``since`` delivered,
        and every part SERVING; the seconds each took from ``since``."""
        deadline = time.monotonic() + timeout
        inbound = outbound = serving = None
        while inbound is None or outbound is None or serving is None:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"{fault}: not recovered in {timeout} s (inbound {inbound}, outbound "
                    f"{outbound}, serving {serving})\n{self.mxfed.log_tail(80)}"
                )
            if inbound is None:
                after = [at for at in self.loads.inbound_ok_at if at > since]
                if after:
                    inbound = after[0] - since
            if outbound is None:
                acked_after = {cid for at, cid in self.loads.outbound_acked if at > since}
                if acked_after & set(self.delivered()):
                    outbound = now - since
            if serving is None and await self.all_serving():
                serving = time.monotonic() - since
            await asyncio.sleep(0.05)
        result = FaultResult(fault, max(inbound, outbound, serving), inbound, outbound, serving)
        self.results.append(result)
        return result

    async def settle(self) -> None:
        """Loads running, every part serving, traffic flowing both ways."""
        await self.recovered_after("start", time.monotonic())
        self.results.pop()

    # Faults ----------------------------------------------------------------------

    def part_pid(self, part: str) -> int:
        assert self.mxfed.process is not None
        for child in psutil.Process(self.mxfed.process.pid).children():
            try:
                command = child.cmdline()
            except psutil.Error:  # gone, or dead and not yet reaped
                continue
            if "--service" in command and command[command.index("--service") + 1] == part:
                return child.pid
        raise LookupError(f"no {part} process")

    async def kill_part(self, part: str) -> FaultResult:
        pid = self.part_pid(part)
        since = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Wait until the supervisor has started another one (the old pid gone).
        for _ in range(400):
            try:
                if self.part_pid(part) != pid:
                    break
            except LookupError:
                pass
            await asyncio.sleep(0.05)
        return await self.recovered_after(f"SIGKILL {part}", since)

    async def terminate_connections(self) -> FaultResult:
        connection = await asyncpg.connect(self.database_url)
        try:
            since = time.monotonic()
            ended = await connection.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            )
        finally:
            await connection.close()
        assert ended > 0
        return await self.recovered_after(f"pg_terminate_backend x{ended}", since)

    async def restart_postgres(self, down_for: float = 6.0) -> FaultResult:
        """PostgreSQL stopped (fast: every session ended), down ``down_for`` seconds,
        started again; recovery counts from when it accepts connections again."""
        down = await self.postgres.restart(down_for)
        since = time.monotonic()
        return await self.recovered_after(f"PostgreSQL restart ({down:.1f} s down)", since)

    async def remote_away(self, away_for: float = 5.0) -> FaultResult:
        await self.receiver.go_down()
        await asyncio.sleep(away_for)
        since = time.monotonic()
        await self.receiver.come_back()
        return await self.recovered_after(f"remote away {away_for:g} s", since)

    def faults(self) -> list[tuple[str, Callable[[], Awaitable[FaultResult]]]]:
        kills = [
            (f"SIGKILL {part}", lambda part=part: self.kill_part(part))  # type: ignore[misc]
            for part in ALL_PARTS
        ]
        return [
            *kills,
            ("remote away", self.remote_away),
            ("pg_terminate_backend", self.terminate_connections),
            ("PostgreSQL restart", self.restart_postgres),
        ]

    # A second events replica -------------------------------------------------------

    async def start_second_events(self) -> None:
        """Start the second events replica and wait until it serves."""
        env = {
            **self.mxfed.environment(),
            "MXFED_EVENTS_LISTEN": f"127.0.0.1:{self._second_port.port}",
            "MXFED_EVENTS_METRICS_LISTEN": f"127.0.0.1:{self._second_metrics.port}",
        }
        log = open(self.directory / "events-2.log", "ab")  # noqa: SIM115 (the child's)
        self.second = subprocess.Popen(
            [
                sys.executable,
                *("-m", "mxfed.cli", "--config", str(self.mxfed.config_path)),
                *("run", "--service", "events"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        address = f"127.0.0.1:{self._second_port.port}"
        for _ in range(600):
            async with self.mxfed.channel("events", address=address) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.1)
        raise TimeoutError("the second events replica did not serve")

    def kill_second_events(self) -> None:
        if self.second is not None and self.second.poll() is None:
            self.second.kill()
            self.second.wait()

    def second_events_transactions(self) -> float:
        """Transactions the second replica processed (its Prometheus counter)."""
        url = f"http://127.0.0.1:{self._second_metrics.port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith("mxfed_events_transactions_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def replica_comes_back(self, outage: float, timeout: float = 180.0) -> dict[str, float]:
        """The second events replica SIGKILLed, away ``outage`` seconds, started again; once
        the gateway sends it transactions again, the first replica is SIGKILLed. Returns
        the seconds from the second replica serving to its first transaction, and the
        /send answers other than 200 while the first was down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.second_events_transactions() == 0:  # both replicas in use
            if loop.time() > deadline:
                raise AssertionError("the gateway never used the second events replica")
            await asyncio.sleep(0.1)
        self.kill_second_events()
        await asyncio.sleep(outage)
        await self.start_second_events()
        serving = time.monotonic()
        while self.second_events_transactions() == 0:
            if loop.time() > deadline:
                raise AssertionError("the second events replica was not used again")
            await asyncio.sleep(0.05)
        used_after = time.monotonic() - serving
        before = collections.Counter(self.loads.inbound_statuses)
        first_pid = self.part_pid("events")
        since = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        while True:
            try:
                if self.part_pid("events") != first_pid:
                    break
            except LookupError:
                pass
            await asyncio.sleep(0.05)
        await self.recovered_after("SIGKILL the first events replica", since)
        during = self.loads.inbound_statuses - before
        return {
            "used_again_after": used_after,
            "not_200_while_first_down": float(sum(during.values()) - during["200"]),
            "answered_200_while_first_down": float(during["200"]),
        }

    # The end -------------------------------------------------------------------

    async def check_nothing_lost(self, timeout: float = 90.0) -> None:
        """Every acknowledged local event delivered, as one event; every inbound PDU
        answered 200 stored; nothing refused."""
        acked = [cid for _, cid in self.loads.outbound_acked]
        deadline = time.monotonic() + timeout
        while not set(acked) <= set(self.delivered()):
            if time.monotonic() > deadline:
                missing = sorted(set(acked) - set(self.delivered()))
                raise AssertionError(f"acknowledged but never delivered: {missing[:20]}")
            await asyncio.sleep(0.1)
        # Each acknowledged send is one event: a send stored twice would reach the remote
        # as two different PDUs. The same PDU may come again in a later transaction after
        # a fault broke the sender's ingest statement while it sent that PDU (the README's
        # "Delivery and catch-up": at least once; the receiver ignores PDUs it has).
        pdus_of: dict[str, set[str]] = collections.defaultdict(set)
        carried_in: dict[str, list[str]] = collections.defaultdict(list)
        for txn_id, body in self.receiver.delivered.items():
            for pdu in body.get("pdus", []):
                cid = pdu.get("content", {}).get("id")
                if isinstance(cid, str):
                    pdus_of[cid].add(pdu["hashes"]["sha256"])
                    carried_in[cid].append(txn_id)
        doubled = {cid: sorted(hashes) for cid, hashes in pdus_of.items() if len(hashes) > 1}
        assert not doubled, f"sends stored more than once (distinct PDUs): {doubled}"
        again = {cid: txns for cid, txns in carried_in.items() if len(txns) > 1}
        if again:
            print(f"PDUs sent again in a later transaction: {again}")
        assert len(acked) == len(set(acked))
        assert self.receiver.bad_signatures == 0
        assert not self.loads.inbound_refused, self.loads.inbound_refused
        accepted = self.loads.inbound_accepted
        stored: list[str] = []
        for start in range(0, len(accepted), 200):
            # The channel may still be backing off from the replica killed last, which the
            # supervisor has started again: wait for it rather than fail at once.
            reply = await self.scene.events.QueryEvents(
                events_pb2.QueryEventsRequest(event_ids=accepted[start : start + 200]),
                timeout=30,
                wait_for_ready=True,
            )
            stored.extend(record.event_id for record in reply.events)
        assert sorted(stored) == sorted(accepted), "an inbound PDU answered 200 is not stored"
        assert len(accepted) == len(set(accepted))
