"""``/_matrix/key/v2/*`` and ``/.well-known/matrix/server`` through the gateway."""

from __future__ import annotations

from matrix_protocol.signing import decode_verify_key, verify_json_signature
from mxfed.clock import now_ms
from tests.support.key_servers import HOUR_MS
from tests.support.keys_service import OUR_SERVER, open_gateway


def _our_key(body: dict) -> tuple[str, object]:
    (key_id,) = body["verify_keys"]
    return key_id, decode_verify_key(body["verify_keys"][key_id]["key"])


async def test_own_server_keys(gateway) -> None:
    response = await gateway.http.get("/_matrix/key/v2/server")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["server_name"] == OUR_SERVER
    key_id, key = _our_key(body)
    verify_json_signature(body, OUR_SERVER, key_id, key)
    assert body["valid_until_ts"] > now_ms() + HOUR_MS // 2


async def test_query_one_server(gateway, key_server_factory) -> None:
    origin = await key_server_factory()
    ours = (await gateway.http.get("/_matrix/key/v2/server")).json()
    our_key_id, our_key = _our_key(ours)

    response = await gateway.http.get(f"/_matrix/key/v2/query/{origin.server_name}")
    assert response.status_code == 200
    (obj,) = response.json()["server_keys"]
    verify_json_signature(obj, origin.server_name, origin.key_id, origin.signing_key.verify_key)
    verify_json_signature(obj, OUR_SERVER, our_key_id, our_key)

    minimum = now_ms() + 2 * HOUR_MS
    response = await gateway.http.get(
        f"/_matrix/key/v2/query/{origin.server_name}",
        params={"minimum_valid_until_ts": minimum},
    )
    assert response.status_code == 200
    assert origin.requests["server"] == 2

    response = await gateway.http.get(
        "/_matrix/key/v2/query/127.0.0.1:1", params={"minimum_valid_until_ts": "soon"}
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INVALID_PARAM"


async def test_batch_query(gateway, key_server_factory) -> None:
    first, second = await key_server_factory(), await key_server_factory()
    response = await gateway.http.post(
        "/_matrix/key/v2/query",
        json={
            "server_keys": {
                first.server_name: {first.key_id: {"minimum_valid_until_ts": now_ms()}},
                second.server_name: {},
                OUR_SERVER: {},
                "127.0.0.1:1": {},
            }
        },
    )
    assert response.status_code == 200
    names = sorted(obj["server_name"] for obj in response.json()["server_keys"])
    assert names == sorted([first.server_name, second.server_name, OUR_SERVER])


async def test_batch_query_edge_cases(gateway) -> None:
    for body in (b"", b"{}", b'{"server_keys": {}}'):
        response = await gateway.http.post("/_matrix/key/v2/query", content=body)
        assert response.status_code == 200
        assert response.json() == {"server_keys": []}
    response = await gateway.http.post("/_matrix/key/v2/query", content=b"{not json")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_NOT_JSON")
    response = await gateway.http.post("/_matrix/key/v2/query", json={"server_keys": []})
    assert (response.status_code, response.json()["errcode"]) == (400, "M_BAD_JSON")
    response = await gateway.http.post(
        "/_matrix/key/v2/query",
        json={"server_keys": {"a.example": {"ed25519:x": {"minimum_valid_until_ts": "x"}}}},
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_well_known(keys_service, gateway) -> None:
    response = await gateway.http.get("/.well-known/matrix/server")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_UNRECOGNIZED"

    delegated, clients = await open_gateway(keys_service, well_known_server="fed.example:443")
    try:
        response = await delegated.http.get("/.well-known/matrix/server")
        assert response.status_code == 200
        assert response.json() == {"m.server": "fed.example:443"}
    finally:
        await delegated.http.aclose()
        await clients.close()


async def test_we_are_not_a_policy_server(gateway) -> None:
    """Spec "Policy Servers": /_matrix/policy/v1/sign is optional; we answer as for any
    unsupported endpoint, 404 M_UNRECOGNIZED."""
    response = await gateway.http.post("/_matrix/policy/v1/sign", json={"type": "m.room.message"})
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_UNRECOGNIZED"
