"""Inbound PDUs/s through the events service's InputTransaction (not a test).

Runs a keys service and an events service in-process on a throw-away database
(local PostgreSQL on 127.0.0.1:5432), a remote homeserver whose key server
answers on loopback HTTPS, and feeds 50-PDU transactions of messages signed
by that server: first into one room, then spread over 5 rooms, then over 25.
Prints the rate, the share of time per receive stage and the ed25519
verifications/s this machine manages in the same run (the ceiling for inbound
PDUs).

    .venv/bin/python bench/bench_send_pdus.py [--transactions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_protocol.canonical_json import encode_json  # noqa: E402
from mxfed.config import Config  # noqa: E402
from mxfed.database import apply_migrations, create_pool  # noqa: E402
from mxfed.identity_files import current_signing_key  # noqa: E402
from mxfed.internal_plane import bind_port, new_server  # noqa: E402
from mxfed.service_runtime import ServiceContext, migrations_directory  # noqa: E402
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from services.events.server import build_servicer  # noqa: E402
from services.keys.server import setup as keys_setup  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.events_service import EventsService, RemoteServer  # noqa: E402
from tests.support.grpc_plane import channel_to, plane_settings  # noqa: E402
from tests.support.key_servers import FakeKeyServer  # noqa: E402

OUR_SERVER = "bench.example"


def ed25519_verifications_per_second(seconds: float = 1.0) -> float:
    key = nacl.signing.SigningKey.generate()
    message = b"x" * 1024
    signed = key.sign(message)
    verify_key = key.verify_key
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            verify_key.verify(signed)
        count += 200
    return count / (time.perf_counter() - started)


async def start_services(database_url: str, data_dir: Path) -> tuple[Any, ...]:
    config = Config(
        **plane_settings(),
        server_name=OUR_SERVER,
        data_dir=data_dir,
        database_url=database_url,
        federation_verify_tls=False,
        federation_allowed_ip_ranges=["127.0.0.0/8"],
    )
    signing_key = current_signing_key(config.signing_key)
    contexts = []
    servers = []
    servicer = None
    ports: dict[str, int] = {}
    for name in ("keys", "events"):
        pool = await create_pool(database_url, max_size=12)
        await apply_migrations(pool, name, migrations_directory(name))
        server = new_server(config, name)
        context = ServiceContext(name=name, config=config, pool=pool, server=server)
        if name == "keys":
            await keys_setup(context)
        else:
            servicer = build_servicer(context)
            events_pb2_grpc.add_EventsServicer_to_server(servicer, server)
        ports[name] = bind_port(server, config, name, "127.0.0.1:0")
        if name == "keys":
            config.keys_address = f"127.0.0.1:{ports[name]}"
        await server.start()
        contexts.append(context)
        servers.append(server)
    # Each call as a caller admitted to it: room set-up as a local actor, /send as the gateway.
    channel = channel_to(f"127.0.0.1:{ports['events']}", "events")
    service = EventsService(
        events_pb2_grpc.EventsStub(channel), OUR_SERVER, signing_key, servers[1], contexts[1].pool
    )
    return service, servicer, contexts, servers, channel


async def joined_room(service: EventsService, remote: RemoteServer) -> tuple[str, str]:
    room_id = await service.create_room("10", preset="public_chat")
    head = await service.head(room_id)
    alice = remote.user("alice")
    join, _ = remote.pdu(head, "m.room.member", alice, {"membership": "join"}, alice)
    await service.transaction(remote.name, [join])
    return room_id, alice


async def run_scenario(
    service: EventsService,
    servicer: Any,
    remote: RemoteServer,
    rooms: int,
    transactions: int,
) -> None:
    joined = [await joined_room(service, remote) for _ in range(rooms)]
    heads = [await service.head(room_id) for room_id, _ in joined]
    per_room = 50 // rooms
    requests = []
    for t in range(transactions):
        pdus = []
        for head, (_, alice) in zip(heads, joined, strict=True):
            pdus += [
                remote.pdu(head, "m.room.message", alice, {"body": f"message {t}.{i}"})[0]
                for i in range(per_room)
            ]
        requests.append(
            events_pb2.InputTransactionRequest(
                origin=remote.name, txn_id=uuid.uuid4().hex, pdus=[encode_json(p) for p in pdus]
            )
        )
    clock = servicer.pipeline.clock
    clock.seconds.clear()
    started = time.perf_counter()
    for request in requests:
        await service.stub.InputTransaction(request)
    elapsed = time.perf_counter() - started
    total = sum(len(r.pdus) for r in requests)
    stored = await service.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = ANY($1::text[]) AND status = 1"
        " AND type = 'm.room.message'",
        [room_id for room_id, _ in joined],
    )
    print(f"\n{rooms} room(s), {transactions} transactions of {per_room * rooms} PDUs:")
    print(f"  {total / elapsed:8.0f} PDUs/s stored ({stored}/{total} accepted, {elapsed:.2f} s)")
    staged = sum(clock.seconds.values())
    for stage, seconds in sorted(clock.seconds.items(), key=lambda item: -item[1]):
        print(f"  {stage:18s} {seconds:6.2f} s  {100 * seconds / elapsed:5.1f}% of wall time")
    if rooms == 1:
        print(f"  {'(rpc, other)':18s} {elapsed - staged:6.2f} s")
    else:
        print("  (per-room stages run concurrently, so their shares add up past 100%)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=20)
    args = parser.parse_args()
    database_url = await create_database("mxfed_bench")
    with tempfile.TemporaryDirectory() as tmp:
        key_server = await FakeKeyServer(Path(tmp)).start()
        service, servicer, contexts, servers, channel = await start_services(
            database_url, Path(tmp)
        )
        try:
            remote = RemoteServer(key_server)
            # warm-up: key fetch, caches
            await run_scenario(service, servicer, remote, 1, 2)
            print("\n(the above was warm-up)")
            await run_scenario(service, servicer, remote, 1, args.transactions)
            await run_scenario(service, servicer, remote, 5, args.transactions)
            await run_scenario(service, servicer, remote, 25, args.transactions)
            print(f"\ned25519 verify (PyNaCl, 1 KB): {ed25519_verifications_per_second():,.0f}/s")
        finally:
            await channel.close()
            for server in servers:
                await server.stop(grace=None)
            for context in contexts:
                await context.close()
                await context.pool.close()
            await key_server.stop()
            await drop_database(database_url)


if __name__ == "__main__":
    asyncio.run(main())
