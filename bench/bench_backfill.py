"""Events/s backfilled from a peer, verified and stored (not a test).

A whole mxfed (``mxfed run``, throw-away database on the local PostgreSQL at
127.0.0.1:5432) and a FakeHomeserver that serves ``/backfill`` from a long
pre-signed chain (create, join, power levels, then messages). The backfill
fetcher runs in this process against mxfed's events service: one
``GET /backfill?v=..&limit=100`` per batch over HTTPS, then one ``InputPdus``
(kind GAP_FILL: format, signatures in one batch, hashes, auth, state,
storage) per response.

NOTSPEC/bench shape: today the events pipeline stores a history event only
when its prev_events are stored, so the batches are asked for bottom-up (each
``v`` is 100 events above the last stored one) rather than from a hole
downwards; the work per event (fetch, verify, check, store) is the same.

Prints the rate, the share of time per stage, and the signature verification
ceiling of this machine measured in the same run.

    .venv/bin/python bench/bench_backfill.py [--events 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_protocol.canonical_json import encode_json  # noqa: E402
from matrix_protocol.redaction import redact  # noqa: E402
from matrix_protocol.room_versions import room_version  # noqa: E402
from matrix_protocol.signing import generate_signing_key, verify_json_signature  # noqa: E402
from mxfed.database import create_pool  # noqa: E402
from mxfed.federation_client import FederationClient, OutboundOptions  # noqa: E402
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, history_pb2  # noqa: E402
from services.backfill.fetching import Fetcher, Settings  # noqa: E402
from services.backfill.storage import BackfillStore  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.fake_homeserver import FakeHomeserver  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402

V10 = room_version("10")


def build_chain(remote: FakeHomeserver, count: int) -> tuple[str, list[tuple[str, dict]]]:
    bob = remote.user("bob")
    room_id = f"!bench{int(time.time() * 1000)}:{remote.server_name}"
    events: list[tuple[str, dict]] = []

    def add(event_type: str, content: dict, auth: list[str], state_key: str | None = None) -> str:
        prevs = [events[-1][0]] if events else []
        event_id, pdu = remote.build_pdu(
            V10,
            room_id=room_id,
            sender=bob,
            event_type=event_type,
            content=content,
            prev_events=prevs,
            auth_events=auth,
            depth=len(events) + 1,
            state_key=state_key,
        )
        events.append((event_id, pdu))
        return event_id

    create_id = add("m.room.create", {"creator": bob, "room_version": "10"}, [], "")
    join_id = add("m.room.member", {"membership": "join"}, [create_id], bob)
    pl_id = add("m.room.power_levels", {"users": {bob: 100}}, [create_id, join_id], "")
    for i in range(count - 3):
        add(
            "m.room.message",
            {"msgtype": "m.text", "body": f"message {i} " + "x" * 100},
            [create_id, pl_id, join_id],
        )
    return room_id, events


class OneHole:
    """Stands in for History: the extremity to ask for is set per batch."""

    def __init__(self) -> None:
        self.next: str = ""

    async def QueryBackwardExtremities(self, request, timeout=None):  # noqa: N802, ANN001, ANN201, ASYNC109
        return history_pb2.QueryBackwardExtremitiesResponse(
            extremities=[history_pb2.BackwardExtremity(event_id=self.next, depth=1)]
        )

    async def QueryServersByJoinAge(self, request, timeout=None):  # noqa: N802, ANN001, ANN201, ASYNC109
        return history_pb2.QueryServersByJoinAgeResponse()


def verification_ceiling(remote: FakeHomeserver, pdus: list[dict[str, Any]]) -> float:
    """Signature checks/s of these PDUs (redact, canonical JSON, ed25519), one core."""
    sample = pdus[: min(len(pdus), 2000)]
    verify_key = remote.signing_key.verify_key
    started = time.perf_counter()
    for pdu in sample:
        verify_json_signature(redact(pdu, V10), remote.server_name, remote.key_id, verify_key)
    return len(sample) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()

    remote = FakeHomeserver()
    room_id, chain = build_chain(remote, args.events)
    by_id = {event_id: pdu for event_id, pdu in chain}
    order = [event_id for event_id, _ in chain]
    index = {event_id: i for i, event_id in enumerate(order)}
    served = {"seconds": 0.0}

    async def backfill(request: web.Request) -> web.Response:
        started = time.perf_counter()
        top = index[request.rel_url.query.getall("v")[0]]
        limit = int(request.rel_url.query["limit"])
        pdus = [by_id[order[i]] for i in range(top, max(-1, top - limit), -1)]
        body = encode_json({"origin": remote.server_name, "origin_server_ts": 0, "pdus": pdus})
        served["seconds"] += time.perf_counter() - started
        return web.Response(body=body, content_type="application/json")

    remote.route("GET", "/_matrix/federation/v1/backfill/{room_id}", backfill)
    await remote.start()
    database_url = await create_database("mxfed_bench_backfill")
    data_dir = Path(tempfile.mkdtemp(prefix="mxfed-bench-backfill-"))
    mxfed = MxfedProcess(data_dir, database_url)
    await asyncio.to_thread(mxfed.start)
    channel = mxfed.channel("events")
    pool = await create_pool(database_url)
    options = OutboundOptions(verify_tls=False, allowed_ip_ranges=["127.0.0.0/8"], max_retries=0)
    client = FederationClient("bench.example", generate_signing_key(), "ed25519:b", options)
    try:
        events = events_pb2_grpc.EventsStub(channel)
        # The room starts with its create event; the rest comes by backfill.
        await events.InputPdus(
            events_pb2.InputPdusRequest(
                room_id=room_id,
                room_version="10",
                origin=remote.server_name,
                kind=events_pb2.INPUT_KIND_GAP_FILL,
                pdus=[encode_json(chain[0][1])],
            ),
            timeout=60,
        )
        hole = OneHole()
        fetcher = Fetcher(
            "bench.example",
            client,
            events,
            hole,
            BackfillStore(pool),
            Settings(),
        )
        # Warm-up batch (key fetch, connections) is not timed.
        hole.next = order[min(100, len(order) - 1)]
        await fetcher.backfill(room_id, 100, [remote.server_name])
        stored_upto = min(100, len(order) - 1)
        total = 0
        rpc_seconds = {"input": 0.0}
        original_input = fetcher._input

        async def timed_input(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original_input(*a, **k)
            finally:
                rpc_seconds["input"] += time.perf_counter() - started

        fetcher._input = timed_input  # type: ignore[method-assign]
        served["seconds"] = 0.0
        started = time.perf_counter()
        while stored_upto < len(order) - 1:
            top = min(stored_upto + 100, len(order) - 1)
            hole.next = order[top]
            result = await fetcher.backfill(room_id, 100, [remote.server_name])
            if result.events_fetched == 0:
                raise SystemExit(f"backfill stored nothing at {top}: {result}")
            total += result.events_fetched
            stored_upto = top
        elapsed = time.perf_counter() - started
        ceiling = verification_ceiling(remote, [pdu for _, pdu in chain])
        print(f"backfilled {total} events in {elapsed:.2f} s: {total / elapsed:,.0f} events/s")
        print(f"signature verification ceiling (one core, same PDUs): {ceiling:,.0f}/s")
        other = elapsed - rpc_seconds["input"] - served["seconds"]
        print(
            "time shares: InputPdus (verify, check, store) "
            f"{rpc_seconds['input'] / elapsed:.0%}, "
            f"peer serving {served['seconds'] / elapsed:.0%}, "
            f"fetch/parse/other {other / elapsed:.0%}"
        )
    finally:
        await client.close()
        await pool.close()
        await channel.close()
        await asyncio.to_thread(mxfed.stop)
        await remote.stop()
        await drop_database(database_url)


if __name__ == "__main__":
    asyncio.run(main())
