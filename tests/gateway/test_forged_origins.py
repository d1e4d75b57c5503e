"""Ten thousand forged origins against the gateway: memory stays bounded and the keys
service fetches unknown servers' keys no faster than its configured rate.

Any request can claim any origin; checking its X-Matrix signature needs that
origin's keys, which a keys replica fetches unless it knows them. Every map
keyed by such names is bounded, and fetches of servers it knows nothing of go
through a token bucket (``keys_fetch_rate`` / ``keys_fetch_burst``), here on a
clock the test moves by hand.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from matrix_protocol.signing import generate_signing_key
from matrix_protocol.xmatrix import sign_request
from mxfed.bounded import EVICTIONS
from mxfed.federation_client import DestinationUnreachableError
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.keys.keyring import Keyring
from services.keys.server import build_keyring
from services.keys.servicer import KeysServicer
from services.keys.storage import KeysStorage
from tests.support.federation_doctor import inert_doctor
from tests.support.grpc_plane import bind_loopback, make_server
from tests.support.keys_service import OUR_SERVER, Gateway, KeysService, KeysUnderTest, open_gateway

MAX_SERVERS = 200
RATE = 5.0
BURST = 20
URI = "/_matrix/federation/v1/query/profile?user_id=%40a%3Akeys-test.example"


class UnreachableServers:
    """The outbound client: records every key fetch; no forged server answers."""

    def __init__(self) -> None:
        self.fetched: list[str] = []

    async def get_json(self, destination: str, path: str, **kwargs: Any) -> Any:
        self.fetched.append(destination)
        raise DestinationUnreachableError(f"{destination} does not exist")

    async def post_json(self, destination: str, path: str, json_body: Any, **kwargs: Any) -> Any:
        self.fetched.append(destination)
        raise DestinationUnreachableError(f"{destination} does not exist")


@dataclass
class Attacked:
    gateway: Gateway
    keyring: Keyring
    client: UnreachableServers
    clock: list[float]


@pytest.fixture
async def attacked(keys_config, keys_storage: KeysStorage) -> AsyncIterator[Attacked]:
    client = UnreachableServers()
    clock = [1000.0]
    config = keys_config.model_copy(
        update={
            "keys_max_cached_servers": MAX_SERVERS,
            "keys_fetch_rate": RATE,
            "keys_fetch_burst": BURST,
        }
    )
    keyring, own_keys = build_keyring(
        config,
        keys_storage,
        client,
        monotonic=lambda: clock[0],  # type: ignore[arg-type]
    )
    server = make_server("keys")
    keys_pb2_grpc.add_KeysServicer_to_server(
        KeysServicer(keyring, own_keys, inert_doctor(config, own_keys)), server
    )
    address = bind_loopback(server, "keys")
    await server.start()
    service = KeysService(None, KeysUnderTest(config, keyring, own_keys, keys_storage), address)  # type: ignore[arg-type]
    gateway, clients = await open_gateway(service)
    yield Attacked(gateway, keyring, client, clock)
    await gateway.http.aclose()
    await clients.close()
    await server.stop(None)


async def _forge(attacked: Attacked, first: int, count: int) -> list[int]:
    key = generate_signing_key()

    async def one(index: int) -> int:
        origin = f"forged-{index}.example"
        header = sign_request("GET", URI, origin, OUR_SERVER, None, key, "ed25519:forged")
        response = await attacked.gateway.http.get(URI, headers={"Authorization": header})
        return response.status_code

    statuses: list[int] = []
    for start in range(first, first + count, 100):
        statuses += await asyncio.gather(*(one(i) for i in range(start, start + 100)))
    return statuses


REPOSITORY = Path(__file__).resolve().parents[2]


def _alive_in_our_code(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated, at the snapshot, by mxfed's own code (not libraries)."""
    ours = [
        tracemalloc.Filter(True, str(REPOSITORY / package / "*"))
        for package in ("gateway", "services", "mxfed", "matrix_protocol")
    ]
    return sum(stat.size for stat in snapshot.filter_traces(ours).statistics("filename"))


async def test_ten_thousand_forged_origins(attacked: Attacked) -> None:
    keyring, client = attacked.keyring, attacked.client
    evicted_before = EVICTIONS.labels("keys_server_keys")._value.get()

    statuses = await _forge(attacked, 0, 8000)
    # Refused as unauthenticated, never a server error.
    assert set(statuses) == {401}
    # The clock stood still: only the burst was fetched.
    assert len(client.fetched) == BURST

    # The last 2,000, with every allocation traced: what is still allocated afterwards is
    # the bounded maps' share, not one entry per origin.
    attacked.clock[0] += 2.0  # two seconds: RATE * 2 more fetches allowed
    gc.collect()
    tracemalloc.start()
    try:
        statuses = await _forge(attacked, 8000, 2000)
        gc.collect()
        alive = _alive_in_our_code(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert set(statuses) == {401}
    assert len(client.fetched) == BURST + int(RATE * 2)
    assert len(set(client.fetched)) == len(client.fetched)  # never the same server twice

    for name in ("_keys", "_backoff", "_fetched_at"):
        assert len(getattr(keyring, name)) <= MAX_SERVERS, name
    assert keyring._inflight == {}
    assert EVICTIONS.labels("keys_server_keys")._value.get() - evicted_before >= 9000
    assert dict(attacked.gateway.app.state.origin_limiter.active) == {}
    # Kept per origin, 2,000 origins would leave ~300 KB here (measured: ~150 B each).
    assert alive < 100_000, alive
