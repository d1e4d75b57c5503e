"""PerformBackfill's choices with stand-in events/History stubs and real remote servers.

Which extremities, which servers in which order (skipping us and servers
that failed recently), one InputPdus call per response with the PDUs oldest
first, and per-(room, event) backoff when nobody has the history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key
from mxfed.database import apply_migrations, create_pool
from mxfed.federation_client import FederationClient, OutboundOptions
from mxfed.service_runtime import migrations_directory
from mxfed_api.events.v1 import events_pb2, history_pb2
from services.backfill.fetching import Fetcher, Settings
from services.backfill.storage import BackfillStore
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver

ROOM = "!history:example.org"
US = "us.example.org"
V10 = room_version("10")


class StandInEvents:
    def __init__(self) -> None:
        self.inputs: list[events_pb2.InputPdusRequest] = []
        self.records: dict[str, events_pb2.EventRecord] = {}
        self.servers_at: list[str] = []

    async def QueryRoomInfo(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        return events_pb2.QueryRoomInfoResponse(exists=request.room_id == ROOM, room_version="10")

    async def QueryEvents(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        return events_pb2.QueryEventsResponse(
            events=[self.records[e] for e in request.event_ids if e in self.records]
        )

    async def QueryServersInRoom(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        return events_pb2.QueryServersInRoomResponse(servers=self.servers_at)

    async def InputPdus(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        self.inputs.append(request)
        return events_pb2.InputPdusResponse(
            results=[
                events_pb2.PduResult(
                    event_id=f"$stored{i}", status=events_pb2.EVENT_STATUS_ACCEPTED
                )
                for i, _ in enumerate(request.pdus)
            ]
        )


class StandInHistory:
    def __init__(self) -> None:
        self.extremities: list[history_pb2.BackwardExtremity] = []
        self.by_age: list[str] = []

    async def QueryBackwardExtremities(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        return history_pb2.QueryBackwardExtremitiesResponse(extremities=self.extremities)

    async def QueryServersByJoinAge(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        return history_pb2.QueryServersByJoinAgeResponse(servers=self.by_age)


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[asyncpg.Pool]:
    url = await create_database("mxfed_backfill_unit")
    pool = await create_pool(url)
    await apply_migrations(pool, "backfill", migrations_directory("backfill"))
    yield pool
    await pool.close()
    await drop_database(url)


class Remote:
    def __init__(self, status: int = 200) -> None:
        self.server = FakeHomeserver()
        self.status = status
        self.queries: list[dict[str, Any]] = []
        self.pdus: list[dict[str, Any]] = []
        self.server.route("GET", "/_matrix/federation/v1/backfill/{room_id}", self._backfill)

    async def _backfill(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        self.queries.append({"v": query.getall("v", []), "limit": query.get("limit")})
        if self.status != 200:
            return web.json_response({"errcode": "M_UNKNOWN", "error": "x"}, status=self.status)
        return web.json_response({"origin": "x", "origin_server_ts": 0, "pdus": self.pdus})


@pytest.fixture
async def remotes() -> AsyncIterator[list[Remote]]:
    started = [Remote(500), Remote(403), Remote()]
    for remote in started:
        await remote.server.start()
    yield started
    for remote in started:
        await remote.server.stop()


@pytest.fixture
async def client() -> AsyncIterator[FederationClient]:
    options = OutboundOptions(verify_tls=False, allowed_ip_ranges=["127.0.0.0/8"], max_retries=0)
    client = FederationClient(US, generate_signing_key(), "ed25519:test", options)
    yield client
    await client.close()


def chain(remote: FakeHomeserver, count: int) -> list[dict[str, Any]]:
    prevs: list[str] = ["$before"]
    pdus = []
    for depth in range(10, 10 + count):
        event_id, pdu = remote.build_pdu(
            V10,
            room_id=ROOM,
            sender=remote.user("bob"),
            event_type="m.room.message",
            content={"body": str(depth)},
            prev_events=prevs,
            auth_events=[],
            depth=depth,
        )
        pdus.append(pdu)
        prevs = [event_id]
    return pdus


def extremity(event_id: str, depth: int, child: str) -> history_pb2.BackwardExtremity:
    return history_pb2.BackwardExtremity(event_id=event_id, depth=depth, referenced_by=[child])


async def test_backfill_tries_servers_oldest_member_first_and_stores_one_batch(
    pool: asyncpg.Pool, remotes: list[Remote], client: FederationClient
) -> None:
    failing, refusing, good = remotes
    events, history = StandInEvents(), StandInHistory()
    history.extremities = [extremity(f"$gap{i}", 100 - i, f"$child{i}") for i in range(7)]
    history.by_age = [US, failing.server.server_name, refusing.server.server_name]
    events.servers_at = [good.server.server_name, US]
    good.pdus = list(reversed(chain(good.server, 8)))  # served newest first
    fetcher = Fetcher(US, client, events, history, BackfillStore(pool), Settings())

    result = await fetcher.backfill(ROOM, limit=50)

    assert result.events_fetched == 8
    assert result.server == good.server.server_name
    assert len(events.inputs) == 1
    (batch,) = events.inputs
    assert batch.kind == events_pb2.INPUT_KIND_BACKFILL and batch.room_version == "10"
    assert batch.origin == good.server.server_name
    import orjson

    depths = [orjson.loads(p)["depth"] for p in batch.pdus]
    assert depths == sorted(depths)  # oldest first
    # The five deepest extremities; limit as asked.
    (query,) = good.queries
    assert query == {"v": [f"$gap{i}" for i in range(5)], "limit": "50"}
    # Servers in the room at that point come first (ordered by join age), never us.
    assert result.servers_failed == []
    assert failing.queries == [] and refusing.queries == []


async def test_failing_servers_are_skipped_and_backed_off(
    pool: asyncpg.Pool, remotes: list[Remote], client: FederationClient
) -> None:
    failing, refusing, good = remotes
    events, history = StandInEvents(), StandInHistory()
    history.extremities = [extremity("$hole", 50, "$above")]
    history.by_age = [failing.server.server_name, refusing.server.server_name]
    fetcher = Fetcher(US, client, events, history, BackfillStore(pool), Settings())

    result = await fetcher.backfill(ROOM)

    assert result.events_fetched == 0
    assert result.servers_failed == [failing.server.server_name, refusing.server.server_name]
    assert failing.queries[0]["limit"] == "100"
    store = BackfillStore(pool)
    # A 5xx backs the server off; a 4xx is the server's answer, not an outage.
    assert await store.servers_backing_off(
        [failing.server.server_name, refusing.server.server_name]
    ) == {failing.server.server_name}
    assert (await store.pull_failures(ROOM))["$hole"] == 1

    # The hole is backing off: the next backfill asks nobody.
    failing.queries.clear()
    refusing.queries.clear()
    history.by_age.append(good.server.server_name)
    again = await fetcher.backfill(ROOM)
    assert again.events_fetched == 0
    assert failing.queries == refusing.queries == good.queries == []

    # Once the backoff is cleared the good server fills it, and the failure is forgotten.
    await store.clear_pull_failures(ROOM, ["$hole"])
    good.pdus = chain(good.server, 3)
    events.records["$hole"] = events_pb2.EventRecord(
        event_id="$hole", status=events_pb2.EVENT_STATUS_ACCEPTED
    )
    filled = await fetcher.backfill(ROOM)
    assert filled.events_fetched == 3
    assert filled.server == good.server.server_name
    assert failing.queries == []  # still backing off
    assert "$hole" not in await store.pull_failures(ROOM)
    await store.clear_server_failures(failing.server.server_name)
