"""Fan-out benchmark: N local events to D destinations, a tenth of them unreachable.

The sender's delivery side (the real storage, leases, workers, batched
bookkeeping and federation client over HTTPS) runs in this process against
ONE aiohttp app on one TLS port that answers for every destination name
(names ``rNNNN.bench.test:PORT`` resolved to 127.0.0.1 by a static
resolver); the unreachable destinations resolve to a closed port (connection
refused). The receivers run in a separate process by default
(``--receivers-in-process`` puts them in this one, sharing its event loop),
but sender, receivers and PostgreSQL still share this machine's cores: the
receivers' TLS and HTTP work competes with the sender's, so the numbers are
a pessimistic bound for a sender with the machine to itself. Events enter the
queues the way ingest stores them (one database transaction per batch).

Measured per round: time from storing the batch until every reachable
destination has every event (taken by the receivers when the last one
arrives; CLOCK_MONOTONIC is shared by the processes), events delivered per
second, and the share of that time spent storing the batch. Round 1 is cold
(a TLS handshake per destination), later rounds reuse connections ("warm").

    .venv/bin/python bench/bench_fanout.py --destinations 1000 --events 1 --rounds 5
    .venv/bin/python bench/bench_fanout.py --destinations 1000 --events 50

Needs PostgreSQL on 127.0.0.1:5432 (a throw-away database is created).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from aiohttp import ClientSession, web  # noqa: E402

from matrix_protocol.canonical_json import encode_json  # noqa: E402
from mxfed.database import apply_migrations, create_pool  # noqa: E402
from mxfed.federation_client import (  # noqa: E402
    FederationClient,
    OutboundOptions,
    StaticDnsResolver,
)
from mxfed.identity_files import ensure_tls_pair, new_signing_key  # noqa: E402
from mxfed.service_runtime import migrations_directory  # noqa: E402
from services.sender.backoff import BackoffPolicy  # noqa: E402
from services.sender.delivery import (  # noqa: E402
    DeliveryManager,
    DeliveryOptions,
    FederationTransport,
)
from services.sender.leases import Membership  # noqa: E402
from services.sender.storage import IngestItem, SenderStorage  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.ports import HeldPort  # noqa: E402

ORIGIN = "bench-origin.test"


class Receivers:
    """One HTTPS app answering /send for every destination name (by Host header).

    Also a plain-HTTP control app: ``POST /expect`` names the event ids and
    destinations of a round, ``GET /wait`` answers when every one of those
    destinations has every id, with the CLOCK_MONOTONIC time the last one
    arrived.
    """

    def __init__(self, port: int, control_port: int) -> None:
        self.port = port
        self.control_port = control_port
        self.received: dict[str, set[str]] = defaultdict(set)
        self.transactions = 0
        self.app = web.Application()
        self.app.router.add_put("/_matrix/federation/v1/send/{txn_id}", self.send)
        self.control = web.Application()
        self.control.router.add_post("/expect", self.expect)
        self.control.router.add_get("/wait", self.wait)
        self._dir = tempfile.TemporaryDirectory()
        self.wanted: set[str] = set()
        self.pending: set[str] = set()
        self.done_at = 0.0
        self.done = asyncio.Event()

    async def send(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        host = request.host
        got = self.received[host]
        for pdu in body["pdus"]:
            got.add(pdu["content"]["id"])
        self.transactions += 1
        if host in self.pending and self.wanted <= got:
            self.pending.discard(host)
            if not self.pending:
                self.done_at = time.monotonic()
                self.done.set()
        return web.json_response({"pdus": {}})

    def set_expected(self, ids: list[str], hosts: list[str]) -> None:
        self.wanted = set(ids)
        self.pending = {h for h in hosts if not self.wanted <= self.received[h]}
        self.done = asyncio.Event()
        self.done_at = time.monotonic()
        if not self.pending:
            self.done.set()

    async def expect(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.set_expected(body["ids"], body["hosts"])
        return web.json_response({})

    async def wait_done(self, seconds: float) -> tuple[float | None, int]:
        try:
            await asyncio.wait_for(self.done.wait(), seconds)
        except TimeoutError:
            return None, len(self.pending)
        return self.done_at, 0

    async def wait(self, request: web.Request) -> web.Response:
        done_at, missing = await self.wait_done(float(request.query["timeout"]))
        return web.json_response(
            {"done_at": done_at, "missing": missing, "transactions": self.transactions}
        )

    async def start(self) -> None:
        directory = Path(self._dir.name)
        ensure_tls_pair(directory / "tls.crt", directory / "tls.key", "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        # The ports are held (bound) by the parent: bind beside it with SO_REUSEPORT.
        await web.TCPSite(
            self.runner,
            "127.0.0.1",
            self.port,
            ssl_context=context,
            backlog=2048,
            reuse_port=True,
        ).start()
        self.control_runner = web.AppRunner(self.control, access_log=None)
        await self.control_runner.setup()
        await web.TCPSite(
            self.control_runner, "127.0.0.1", self.control_port, reuse_port=True
        ).start()

    async def stop(self) -> None:
        await self.control_runner.cleanup()
        await self.runner.cleanup()
        self._dir.cleanup()


def receiver_process(port: int, control_port: int) -> None:
    async def serve() -> None:
        receivers = Receivers(port, control_port)
        await receivers.start()
        try:
            await asyncio.Event().wait()
        finally:
            await receivers.stop()

    asyncio.run(serve())


class RemoteReceivers:
    """The receivers in a child process, driven through their control app."""

    def __init__(self) -> None:
        self.held = (HeldPort(), HeldPort())
        self.port, self.control_port = (held.port for held in self.held)
        self.process = multiprocessing.get_context("spawn").Process(
            target=receiver_process, args=(self.port, self.control_port), daemon=True
        )
        self.url = f"http://127.0.0.1:{self.control_port}"

    async def start(self) -> None:
        self.process.start()
        self.session = ClientSession()
        for _ in range(200):
            try:
                async with self.session.post(f"{self.url}/expect", json={"ids": [], "hosts": []}):
                    return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("receiver process did not start")

    async def expect(self, ids: list[str], hosts: list[str]) -> None:
        async with self.session.post(f"{self.url}/expect", json={"ids": ids, "hosts": hosts}):
            pass

    async def wait(self, seconds: float) -> tuple[float | None, int, int]:
        async with self.session.get(f"{self.url}/wait", params={"timeout": str(seconds)}) as r:
            body = await r.json()
        return body["done_at"], body["missing"], body["transactions"]

    async def stop(self) -> None:
        await self.session.close()
        if self.process.pid is not None:
            self.process.terminate()
        self.process.join(5)


class LocalReceivers:
    """The receivers in this process (sharing the sender's event loop)."""

    def __init__(self) -> None:
        self.held = (HeldPort(), HeldPort())
        self.receivers = Receivers(*(held.port for held in self.held))
        self.port = self.receivers.port

    async def start(self) -> None:
        await self.receivers.start()

    async def expect(self, ids: list[str], hosts: list[str]) -> None:
        self.receivers.set_expected(ids, hosts)

    async def wait(self, seconds: float) -> tuple[float | None, int, int]:
        done_at, missing = await self.receivers.wait_done(seconds)
        return done_at, missing, self.receivers.transactions

    async def stop(self) -> None:
        await self.receivers.stop()


def pdu(pdu_id: str, room_id: str) -> bytes:
    return encode_json(
        {
            "room_id": room_id,
            "sender": f"@bench:{ORIGIN}",
            "type": "m.room.message",
            "content": {"id": pdu_id, "body": "x" * 200, "msgtype": "m.text"},
            "origin_server_ts": int(time.time() * 1000),
            "depth": 10,
            "prev_events": ["$prev"],
            "auth_events": ["$a", "$b", "$c"],
            "hashes": {"sha256": "x" * 43},
            "signatures": {ORIGIN: {"ed25519:a": "y" * 86}},
        }
    )


async def run(args: argparse.Namespace) -> None:
    database_url = await create_database("mxfed_bench")
    pool = await create_pool(database_url, max_size=args.pool)
    receivers: RemoteReceivers | LocalReceivers = (
        LocalReceivers() if args.receivers_in_process else RemoteReceivers()
    )
    await receivers.start()
    closed = HeldPort()  # bound, never listening: connections are refused
    closed_port = closed.port
    reachable = [f"r{i:04d}.bench.test:{receivers.port}" for i in range(args.destinations)]
    dead_count = args.destinations // 10
    dead = [f"d{i:04d}.bench.test:{closed_port}" for i in range(dead_count)]
    reachable = reachable[: args.destinations - dead_count]
    hosts = {name.split(":")[0]: ["127.0.0.1"] for name in reachable + dead}
    key = new_signing_key()
    client = FederationClient(
        ORIGIN,
        key.signing_key,
        key.key_id,
        OutboundOptions(
            verify_tls=False,
            allowed_ip_ranges=["127.0.0.0/8"],
            max_retries=0,
            request_timeout=30,
            max_connections_per_host=2,
        ),
        dns=StaticDnsResolver(hosts),
    )
    try:
        await apply_migrations(pool, "sender", migrations_directory("sender"))
        storage = SenderStorage(pool)
        membership = Membership(storage, "bench-replica")
        await membership.beat()
        manager = DeliveryManager(
            storage,
            membership,
            FederationTransport(ORIGIN, client),
            BackoffPolicy(10_000, 3_600_000),
            DeliveryOptions(max_concurrent_requests=args.concurrency, idle_linger=args.idle_linger),
        )
        tasks = [
            asyncio.create_task(manager.run()),
            asyncio.create_task(membership.run(manager.on_heartbeat)),
        ]
        positions = itertools.count(1)
        destinations = reachable + dead
        hosts_reachable = list(reachable)
        where = "in this process" if args.receivers_in_process else "in a separate process"
        print(
            f"fan-out: {len(reachable)} reachable + {len(dead)} unreachable destinations, "
            f"{args.events} event(s) per round, db pool {args.pool}, "
            f"{args.concurrency} concurrent requests\n"
            f"  note: sender (this process), receivers ({where}) and PostgreSQL share "
            f"this machine's {os.cpu_count()} cores; the receivers' TLS/HTTP work competes "
            "with the sender's"
        )
        warm: list[float] = []
        for round_number in range(1, args.rounds + 1):
            ids = []
            items = []
            for _ in range(args.events):
                position = next(positions)
                pdu_id = f"ev{position}"
                ids.append(pdu_id)
                items.append(
                    IngestItem(
                        position,
                        f"${pdu_id}",
                        "!room:bench",
                        pdu(pdu_id, "!room:bench"),
                        destinations,
                    )
                )
            await receivers.expect(ids, hosts_reachable)
            started = time.monotonic()
            async with pool.acquire() as connection:
                for i in range(0, len(items), 500):
                    batch = items[i : i + 500]
                    await SenderStorage.ingest_batch(connection, batch, batch[-1].stream_position)
            stored = time.monotonic()
            manager.wake(destinations)
            done_at, missing, transactions = await receivers.wait(args.timeout)
            if done_at is None:
                print(f"  round {round_number}: TIMEOUT, {missing} destinations missing")
                continue
            elapsed = done_at - started
            if round_number > 1:
                warm.append(elapsed)
            delivered = len(reachable) * len(ids)
            print(
                f"  round {round_number} ({'cold' if round_number == 1 else 'warm'}): "
                f"every reachable destination had every event after "
                f"{elapsed * 1000:.0f} ms; {delivered / elapsed:,.0f} events delivered/s; "
                f"storing the batch {100 * (stored - started) / elapsed:.0f}% of the time; "
                f"{transactions} transactions so far"
            )
            # Let the transactions' bookkeeping settle before the next round.
            await asyncio.sleep(args.pause)
        if warm:
            print(
                f"  warm rounds: median {statistics.median(warm) * 1000:.0f} ms, "
                f"max {max(warm) * 1000:.0f} ms over {len(warm)} round(s)"
            )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await manager.close()
        backed_off = await pool.fetchval(
            "SELECT count(*) FROM sender.destinations WHERE retry_until_ts > 0"
        )
        print(f"  unreachable destinations in backoff afterwards: {backed_off}")
    finally:
        await client.close()
        await receivers.stop()
        await pool.close()
        await drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destinations", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=10, help="database connections")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between rounds (bookkeeping settles)"
    )
    parser.add_argument(
        "--idle-linger",
        type=float,
        default=30,
        help="seconds a worker with nothing queued keeps its lease (the service: 5); "
        "below --pause every round claims its destinations afresh",
    )
    parser.add_argument(
        "--receivers-in-process",
        action="store_true",
        help="run the receivers in the sender's process and event loop",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
