"""Fan-out benchmark: N local events to D destinations, a tenth of them unreachable.

Everything runs in one process on loopback: the sender's delivery side (the
real storage, leases, workers and federation client over HTTPS) against ONE
aiohttp app on one TLS port that answers for every destination name (names
``rNNNN.bench.test:PORT`` resolved to 127.0.0.1 by a static resolver); the
unreachable destinations resolve to a closed port (connection refused).
Events enter the queues the way ingest stores them (one database
transaction per batch). Measured per round: time until every reachable
destination has every event, events delivered per second, and the share of
that time spent storing the batch. Round 1 is cold (a TLS handshake per
destination), later rounds reuse connections.

    .venv/bin/python bench/bench_fanout.py --destinations 1000 --events 1 --rounds 3
    .venv/bin/python bench/bench_fanout.py --destinations 1000 --events 50

Needs PostgreSQL on 127.0.0.1:5432 (a throw-away database is created).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import ssl
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

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
from tests.support.ports import free_port  # noqa: E402

ORIGIN = "bench-origin.test"


class Receivers:
    """One HTTPS app answering /send for every destination name (by Host header)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: dict[str, set[str]] = defaultdict(set)
        self.transactions = 0
        self.app = web.Application()
        self.app.router.add_put("/_matrix/federation/v1/send/{txn_id}", self.send)
        self._dir = tempfile.TemporaryDirectory()
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def send(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        got = self.received[request.host]
        for pdu in body["pdus"]:
            got.add(pdu["content"]["id"])
        self.transactions += 1
        return web.json_response({"pdus": {}})

    async def start(self) -> None:
        directory = Path(self._dir.name)
        ensure_tls_pair(directory / "tls.crt", directory / "tls.key", "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(
            self.runner, "127.0.0.1", self.port, ssl_context=context, backlog=2048
        ).start()

    async def stop(self) -> None:
        await self.runner.cleanup()
        self._dir.cleanup()


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
    receivers = Receivers()
    await receivers.start()
    closed_port = free_port()
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
            DeliveryOptions(max_concurrent_requests=args.concurrency, idle_linger=30),
        )
        tasks = [
            asyncio.create_task(manager.run()),
            asyncio.create_task(membership.run(manager.on_heartbeat)),
        ]
        positions = itertools.count(1)
        destinations = reachable + dead
        print(
            f"fan-out: {len(reachable)} reachable + {len(dead)} unreachable destinations, "
            f"{args.events} event(s) per round, db pool {args.pool}, "
            f"{args.concurrency} concurrent requests, {os.cpu_count()} cores"
        )
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
            wanted = set(ids)
            started = time.perf_counter()
            async with pool.acquire() as connection:
                for i in range(0, len(items), 500):
                    batch = items[i : i + 500]
                    await SenderStorage.ingest_batch(connection, batch, batch[-1].stream_position)
            stored = time.perf_counter()
            manager.wake(destinations)
            pending = set(reachable)
            while pending:
                pending = {d for d in pending if not wanted <= receivers.received[d]}
                if pending:
                    await asyncio.sleep(0.002)
                if time.perf_counter() - started > args.timeout:
                    print(f"  round {round_number}: TIMEOUT, {len(pending)} destinations missing")
                    break
            done = time.perf_counter()
            elapsed = done - started
            delivered = len(reachable) * len(ids)
            print(
                f"  round {round_number}: every reachable destination had every event after "
                f"{elapsed * 1000:.0f} ms; {delivered / elapsed:,.0f} events delivered/s; "
                f"storing the batch {100 * (stored - started) / elapsed:.0f}% of the time; "
                f"{receivers.transactions} transactions so far"
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
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
