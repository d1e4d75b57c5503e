"""``require_origin`` at the HTTP level: a test-only route behind it, a real keys service."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, Depends, Request

from gateway import xmatrix_auth
from gateway.responses import JsonResponse
from gateway.xmatrix_auth import client_certificate_matches, raw_request_target, require_origin
from matrix_protocol.xmatrix import sign_request
from mxfed.clock import now_ms
from mxfed.verify_key_cache import VerifyKeyCache
from tests.support.key_servers import HOUR_MS
from tests.support.keys_service import OUR_SERVER, Gateway, open_gateway

router = APIRouter()


@router.api_route("/_matrix/federation/v1/test/{rest:path}", methods=["GET", "PUT", "POST"])
async def authenticated(
    request: Request, rest: str, origin: str = Depends(require_origin)
) -> JsonResponse:
    return JsonResponse({"origin": origin, "body": request.state.json_body, "rest": rest})


@pytest.fixture
async def authed(keys_service) -> AsyncIterator[Gateway]:
    opened, clients = await open_gateway(keys_service, router)
    yield opened
    await opened.http.aclose()
    await clients.close()


def _header(
    server, method: str, uri: str, content: Any = None, destination: str = OUR_SERVER, **kw
) -> str:
    return sign_request(
        method,
        uri,
        kw.get("origin", server.server_name),
        destination,
        content,
        kw.get("key", server.signing_key),
        kw.get("key_id", server.key_id),
    )


async def _send(gateway, method: str, uri: str, headers: list[str], body: bytes | None = None):
    return await gateway.http.request(
        method,
        uri,
        content=body,
        headers=[("Authorization", header) for header in headers],
    )


def _status(response) -> tuple[int, str]:
    return response.status_code, response.json().get("errcode")


URI = "/_matrix/federation/v1/test/send/1"


async def test_valid_request_reaches_the_handler(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    content = {"pdus": [], "edus": [{"x": "é"}]}
    response = await _send(
        authed, "PUT", URI, [_header(origin, "PUT", URI, content)], orjson.dumps(content)
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"origin": origin.server_name, "body": content, "rest": "send/1"}

    response = await _send(authed, "GET", URI, [_header(origin, "GET", URI)])
    assert response.status_code == 200, response.text
    assert response.json()["body"] is None


async def test_encoded_path_and_query_verify(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    uri = (
        "/_matrix/federation/v1/test/state/%21room%3Aexample.org"
        "?event_id=%24abc%2Bdef%2F1&user_id=%40alice%3Aexample&q=a+b&q=%E2%9C%93"
    )
    response = await _send(authed, "GET", uri, [_header(origin, "GET", uri)])
    assert response.status_code == 200, response.text
    assert response.json()["rest"] == "state/!room:example.org"
    # The decoded form of the same target is a different signed object.
    decoded = "/_matrix/federation/v1/test/state/!room:example.org?event_id=%24abc%2Bdef%2F1"
    response = await _send(authed, "GET", uri, [_header(origin, "GET", decoded)])
    assert _status(response) == (401, "M_UNAUTHORIZED")


async def test_missing_header(authed) -> None:
    response = await authed.http.get(URI)
    assert _status(response) == (401, "M_UNAUTHORIZED")
    response = await authed.http.get(URI, headers={"Authorization": "Bearer abc"})
    assert _status(response) == (401, "M_UNAUTHORIZED")


async def test_malformed_header(authed) -> None:
    for header in ('X-Matrix origin="a.example",key="ed25519:1"', 'X-Matrix origin="unterminated'):
        response = await _send(authed, "GET", URI, [header])
        assert _status(response) == (400, "M_UNAUTHORIZED")


async def test_wrong_destination(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    header = _header(origin, "GET", URI, destination="other.example")
    assert _status(await _send(authed, "GET", URI, [header])) == (401, "M_UNAUTHORIZED")


async def test_invalid_origin(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    header = _header(origin, "GET", URI, origin="not a server name!")
    assert _status(await _send(authed, "GET", URI, [header])) == (401, "M_UNAUTHORIZED")


async def test_unknown_key(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    header = _header(origin, "GET", URI, key_id="ed25519:unknown")
    assert _status(await _send(authed, "GET", URI, [header])) == (401, "M_UNAUTHORIZED")


async def test_bad_signature(authed, key_server_factory) -> None:
    origin, other = await key_server_factory(), await key_server_factory()
    header = _header(origin, "GET", URI, key=other.signing_key)
    assert _status(await _send(authed, "GET", URI, [header])) == (401, "M_UNAUTHORIZED")


async def test_body_changed_after_signing(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    header = _header(origin, "PUT", URI, {"pdus": []})
    response = await _send(authed, "PUT", URI, [header], b'{"pdus": [{}]}')
    assert _status(response) == (401, "M_UNAUTHORIZED")
    # A body added to a request signed without one.
    response = await _send(authed, "PUT", URI, [_header(origin, "PUT", URI)], b"{}")
    assert _status(response) == (401, "M_UNAUTHORIZED")


async def test_origin_mismatch(authed, key_server_factory) -> None:
    signer, claimed = await key_server_factory(), await key_server_factory(key_version="fake1")
    # Signed by one server's key, claiming to be another server with the same key id.
    header = _header(signer, "GET", URI, origin=claimed.server_name)
    assert _status(await _send(authed, "GET", URI, [header])) == (401, "M_UNAUTHORIZED")
    # Two headers naming different origins.
    headers = [_header(signer, "GET", URI), _header(claimed, "GET", URI)]
    assert _status(await _send(authed, "GET", URI, headers)) == (401, "M_UNAUTHORIZED")


async def test_several_headers(authed, key_server_factory) -> None:
    origin, other = await key_server_factory(), await key_server_factory()
    good = _header(origin, "GET", URI)
    unknown_key = _header(origin, "GET", URI, key_id="ed25519:other")
    response = await _send(authed, "GET", URI, [unknown_key, good])
    assert response.status_code == 200, response.text
    bad = _header(origin, "GET", URI, key=other.signing_key)
    response = await _send(authed, "GET", URI, [good, bad])
    assert _status(response) == (401, "M_UNAUTHORIZED")


class _Calls:
    """Counts the keys service's request verifications (the keyring's)."""

    def __init__(self, keyring) -> None:
        self.count = 0
        self._verify = keyring.verify_request

    async def __call__(self, *args):
        self.count += 1
        return await self._verify(*args)


@pytest.fixture
def calls(authed, monkeypatch) -> _Calls:
    """The keys service's request verifications, counted from here on."""
    calls = _Calls(authed.keys.keys.keyring)
    monkeypatch.setattr(authed.keys.keys.keyring, "verify_request", calls)
    return calls


async def test_next_requests_are_verified_with_the_keys_cached_in_the_gateway(
    authed, key_server_factory, calls
) -> None:
    origin, other = await key_server_factory(), await key_server_factory()
    assert (await _send(authed, "GET", URI, [_header(origin, "GET", URI)])).status_code == 200
    assert calls.count == 1
    content = {"pdus": []}
    response = await _send(
        authed, "PUT", URI, [_header(origin, "PUT", URI, content)], orjson.dumps(content)
    )
    assert response.status_code == 200, response.text
    # Refused here, with the same errors as the keys service gives.
    forged = _header(origin, "GET", URI, key=other.signing_key)
    response = await _send(authed, "GET", URI, [forged])
    assert _status(response) == (401, "M_UNAUTHORIZED")
    assert "bad signature" in response.json()["error"]
    response = await _send(authed, "PUT", URI, [_header(origin, "PUT", URI, content)], b"{}")
    assert _status(response) == (401, "M_UNAUTHORIZED")
    elsewhere = _header(origin, "GET", URI.replace("test/", "test/x"))
    assert _status(await _send(authed, "GET", URI, [elsewhere])) == (401, "M_UNAUTHORIZED")
    assert calls.count == 1
    # A key it has not cached (a header with another key id) goes to the keys service.
    unknown_key = _header(origin, "GET", URI, key_id="ed25519:other")
    response = await _send(authed, "GET", URI, [unknown_key, _header(origin, "GET", URI)])
    assert response.status_code == 200 and calls.count == 2


async def test_requests_with_several_headers_are_verified_by_the_keys_service(
    authed, key_server_factory, calls
) -> None:
    origin = await key_server_factory()
    header = _header(origin, "GET", URI)
    assert (await _send(authed, "GET", URI, [header])).status_code == 200
    assert (await _send(authed, "GET", URI, [header])).status_code == 200
    assert calls.count == 1  # the origin's key is cached in the gateway now
    # The sender chooses how many headers it sends, each a verification over the
    # whole body: not the gateway's loop's to make, even with every key cached.
    headers = [header] * (xmatrix_auth.LOCAL_MAX_CREDENTIALS + 1)
    assert (await _send(authed, "GET", URI, headers)).status_code == 200
    assert calls.count == 2


async def test_cached_keys_are_asked_for_again_once_stale_or_past_their_validity(
    authed, key_server_factory, calls, monkeypatch
) -> None:
    origin = await key_server_factory()
    monotonic = [0.0]
    authed.app.state.request_keys = VerifyKeyCache(
        "test_request_keys", ttl=60.0, monotonic=lambda: monotonic[0]
    )
    header = _header(origin, "GET", URI)
    assert (await _send(authed, "GET", URI, [header])).status_code == 200
    assert (await _send(authed, "GET", URI, [header])).status_code == 200
    assert calls.count == 1
    monotonic[0] = 61.0  # past the cache's time to live
    assert (await _send(authed, "GET", URI, [header])).status_code == 200
    assert calls.count == 2
    # Past the key's validity (an hour): not used from the cache; the keys service,
    # whose clock is still now, verifies.
    later = now_ms() + 2 * HOUR_MS
    monkeypatch.setattr(xmatrix_auth, "now_ms", lambda: later)
    assert (await _send(authed, "GET", URI, [header])).status_code == 200
    assert calls.count == 3


async def test_body_not_json(authed, key_server_factory) -> None:
    origin = await key_server_factory()
    header = _header(origin, "PUT", URI, {"a": 1})
    response = await _send(authed, "PUT", URI, [header], b"{not json")
    assert _status(response) == (400, "M_NOT_JSON")


async def test_keys_service_down_is_not_a_500(keys_service, key_server_factory) -> None:
    origin = await key_server_factory()
    keys_service.address = "127.0.0.1:1"
    gateway, clients = await open_gateway(keys_service, router)
    try:
        response = await _send(gateway, "GET", URI, [_header(origin, "GET", URI)])
        assert _status(response) == (502, "M_UNKNOWN")
    finally:
        await gateway.http.aclose()
        await clients.close()


async def test_client_certificate_required_without_tls_extension(
    keys_service, key_server_factory
) -> None:
    origin = await key_server_factory()
    gateway, clients = await open_gateway(
        keys_service, router, require_tls_client_certificate_match=True
    )
    try:
        response = await _send(gateway, "GET", URI, [_header(origin, "GET", URI)])
        assert _status(response) == (401, "M_UNAUTHORIZED")
    finally:
        await gateway.http.aclose()
        await clients.close()


def _certificate_pem(names: list[x509.GeneralName]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_client_certificate_matching() -> None:
    def scope(pem: str | None) -> dict:
        chain = [pem] if pem else []
        return {"extensions": {"tls": {"client_cert_chain": chain}}}

    dns = _certificate_pem([x509.DNSName("matrix.example.org")])
    wildcard = _certificate_pem([x509.DNSName("*.example.org")])
    ip = _certificate_pem([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    assert client_certificate_matches(scope(dns), "matrix.example.org:8448")
    assert not client_certificate_matches(scope(dns), "evil.example.org")
    assert client_certificate_matches(scope(wildcard), "other.example.org")
    assert not client_certificate_matches(scope(wildcard), "example.org")
    assert client_certificate_matches(scope(ip), "127.0.0.1:8448")
    assert not client_certificate_matches(scope(ip), "127.0.0.2")
    assert not client_certificate_matches(scope(None), "matrix.example.org")
    assert not client_certificate_matches({}, "matrix.example.org")


def test_raw_request_target() -> None:
    scope = {"path": "/a/b c", "raw_path": b"/a/b%20c", "query_string": b"x=%40y"}
    assert raw_request_target(scope) == "/a/b%20c?x=%40y"
    # httpx's ASGI transport puts the query into raw_path as well.
    scope["raw_path"] = b"/a/b%20c?x=%40y"
    assert raw_request_target(scope) == "/a/b%20c?x=%40y"
    assert raw_request_target({"path": "/p", "raw_path": b"/p", "query_string": b""}) == "/p"


slow_router = APIRouter()
release = None


@slow_router.get("/_matrix/federation/v1/slow")
async def slow(origin: str = Depends(require_origin)) -> JsonResponse:
    assert release is not None
    await release.wait()
    return JsonResponse({"origin": origin})


async def test_concurrent_requests_per_origin_are_limited(keys_service, key_server_factory) -> None:
    import asyncio

    global release
    release = asyncio.Event()
    server = await key_server_factory()
    opened, clients = await open_gateway(keys_service, slow_router)
    opened.app.state.origin_limiter.limit = 2
    uri = "/_matrix/federation/v1/slow"
    try:
        first = [
            asyncio.create_task(_send(opened, "GET", uri, [_header(server, "GET", uri)]))
            for _ in range(2)
        ]
        while sum(opened.app.state.origin_limiter.active.values()) < 2:
            await asyncio.sleep(0.01)
        refused = await _send(opened, "GET", uri, [_header(server, "GET", uri)])
        assert refused.status_code == 429
        assert refused.json()["errcode"] == "M_LIMIT_EXCEEDED"
        assert refused.headers["Retry-After"] == "1"
        release.set()
        assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
        assert not opened.app.state.origin_limiter.active  # every slot given back
        again = await _send(opened, "GET", uri, [_header(server, "GET", uri)])
        assert again.status_code == 200
    finally:
        await opened.http.aclose()
        await clients.close()
