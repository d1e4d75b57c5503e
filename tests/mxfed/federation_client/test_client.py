"""FederationClient against real HTTPS servers on 127.0.0.1 (no public network)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import nacl.signing
import pytest
from aiohttp import web
from unpaddedbase64 import decode_base64

from matrix_protocol.xmatrix import parse_xmatrix_header, verify_request
from mxfed.federation_client import (
    DestinationUnreachableError,
    FederationClient,
    FederationDeniedError,
    HttpResponseError,
    InvalidResponseError,
    NotRetryingDestination,
    OutboundOptions,
    RequestTimeoutError,
    StaticDnsResolver,
    TlsVerificationError,
    TransportFailure,
    WellKnownFailure,
    build_ssl_context,
    classify_transport_error,
    encode_query,
    federation_path,
)

ORIGIN = "origin.test"
KEY_ID = "ed25519:k1"
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture(scope="module")
def signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def make_options(pki: Any = None, wk_port: int = 443, **kw: Any) -> OutboundOptions:
    defaults: dict[str, Any] = {
        "ca_file": pki.ca_file if pki is not None else None,
        "allowed_ip_ranges": LOOPBACK,
        "well_known_port": wk_port,
        "retry_initial_delay": 0.01,
        "retry_max_delay": 0.05,
        "request_timeout": 10.0,
        "connect_timeout": 2.0,
        "well_known_timeout": 5.0,
    }
    defaults.update(kw)
    return OutboundOptions(**defaults)


def make_client(
    signing_key: nacl.signing.SigningKey,
    options: OutboundOptions,
    dns: StaticDnsResolver | None = None,
    **kw: Any,
) -> FederationClient:
    if dns is None:
        dns = StaticDnsResolver(hosts={n: ["127.0.0.1"] for n in ("fed.test", "target.test")})
    return FederationClient(ORIGIN, signing_key, KEY_ID, options, dns=dns, **kw)


def loopback_dns(*names: str, srv: dict[str, Any] | None = None) -> StaticDnsResolver:
    return StaticDnsResolver(hosts={n: ["127.0.0.1"] for n in names}, srv=srv or {})


def assert_signed(seen: Any, signing_key: nacl.signing.SigningKey, destination: str) -> None:
    creds = parse_xmatrix_header(seen.headers["Authorization"])
    assert creds.origin == ORIGIN
    assert creds.key == KEY_ID
    assert creds.destination == destination
    content = json.loads(seen.body) if seen.body else None
    verify_request(creds, seen.method, seen.raw_path, destination, content, signing_key.verify_key)


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def test_federation_path_quotes_every_segment() -> None:
    assert (
        federation_path("_matrix", "federation", "v1", "event", "$abc/def+g:h")
        == "/_matrix/federation/v1/event/%24abc%2Fdef%2Bg%3Ah"
    )
    assert federation_path("_matrix", "federation", "v1", "send", 123) == (
        "/_matrix/federation/v1/send/123"
    )


def test_encode_query() -> None:
    assert encode_query(None) == ""
    assert encode_query([("user_id", "@alice:other.example"), ("field", "displayname")]) == (
        "user_id=%40alice%3Aother.example&field=displayname"
    )
    assert encode_query({"ver": ["1", "12"], "limit": 10, "x": True}) == (
        "ver=1&ver=12&limit=10&x=true"
    )
    assert encode_query([("q", "a b&c=d/é+")]) == "q=a%20b%26c%3Dd%2F%C3%A9%2B"


# ---------------------------------------------------------------------------
# Signing, raw request target, Host/SNI per discovery step
# ---------------------------------------------------------------------------


async def test_signed_get_with_special_chars_explicit_port(pki, server, signing_key) -> None:
    dest = f"fed.test:{server.port}"
    async with make_client(signing_key, make_options(pki)) as client:
        path = federation_path("_matrix", "federation", "v1", "event", "$abc/def+ghi:x.org")
        query = [("user_id", "@alice:other.example"), ("q", "a b&c=d/é+?#")]
        body = await client.get_json(dest, path, query=query)
    assert body == {"ok": True}
    [seen] = server.requests
    expected = (
        "/_matrix/federation/v1/event/%24abc%2Fdef%2Bghi%3Ax.org"
        "?user_id=%40alice%3Aother.example&q=a%20b%26c%3Dd%2F%C3%A9%2B%3F%23"
    )
    assert seen.raw_path == expected
    assert seen.method == "GET"
    assert seen.body == b""
    assert seen.headers["Host"] == dest  # step 2: server name with port
    assert server.sni == ["fed.test"]
    assert_signed(seen, signing_key, dest)
    # GET: no content key was signed (verify_request with content=None passed)


async def test_signed_put_with_body(pki, server, signing_key) -> None:
    dest = f"fed.test:{server.port}"
    txn = {"origin": ORIGIN, "origin_server_ts": 1, "pdus": [], "edus": [{"x": "ü"}]}
    async with make_client(signing_key, make_options(pki)) as client:
        await client.put_json(
            dest, federation_path("_matrix", "federation", "v1", "send", "t1"), txn
        )
    [seen] = server.requests
    assert seen.method == "PUT"
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == txn
    assert_signed(seen, signing_key, dest)


async def test_empty_body_put_signs_empty_content(pki, server, signing_key) -> None:
    dest = f"fed.test:{server.port}"
    async with make_client(signing_key, make_options(pki)) as client:
        await client.put_json(dest, "/_matrix/federation/v1/x", {})
    [seen] = server.requests
    assert seen.body == b"{}"
    creds = parse_xmatrix_header(seen.headers["Authorization"])
    verify_request(creds, "PUT", seen.raw_path, dest, {}, signing_key.verify_key)


async def test_unsigned_request(pki, server, signing_key) -> None:
    async with make_client(signing_key, make_options(pki)) as client:
        resp = await client.request(
            "GET", f"fed.test:{server.port}", "/_matrix/key/v2/server", sign=False
        )
    assert resp.status == 200 and resp.body == {"ok": True}
    assert "Authorization" not in server.requests[0].headers


async def test_spec_vector_header_via_srv(pki, server, refused_port: int) -> None:
    """A request-signing GET vector of our own (pynacl, cross-checked with
    signedjson), end to end: destination ``other.example`` (no port,
    no well-known) resolved through SRV to the test server."""
    seed = decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
    key = nacl.signing.SigningKey(seed)
    dns = loopback_dns(
        "target.test", srv={"_matrix-fed._tcp.other.example": [(10, 1, server.port, "target.test")]}
    )
    opts = make_options(pki, wk_port=refused_port)  # nothing listens: well-known fails
    async with FederationClient("domain", key, "ed25519:1", opts, dns=dns) as client:
        await client.get_json(
            "other.example",
            "/_matrix/federation/v1/query/profile",
            query=[("user_id", "@alice:other.example"), ("field", "displayname")],
        )
    [seen] = server.requests
    assert seen.headers["Authorization"] == (
        'X-Matrix origin="domain",destination="other.example",key="ed25519:1",'
        'sig="OdZH9DQ+MOp2VLj2en5EZGGlRwd/3tBxWf9W/VeaCM9X23pM8IzRJQ3QMmI2avNx9BEwtFawwmaLLfcM0AIiDA"'
    )
    assert seen.headers["Host"] == "other.example"  # step 4: hostname
    assert server.sni == ["other.example"]  # cert checked against the delegating name


async def test_ip_literal_destination_no_sni(pki, server, signing_key) -> None:
    dest = f"127.0.0.1:{server.port}"
    async with make_client(signing_key, make_options(pki)) as client:
        await client.get_json(dest, "/_matrix/federation/v1/version")
    [seen] = server.requests
    assert seen.headers["Host"] == dest
    assert server.sni == [None]  # no SNI for an IP; cert validated against the IP SAN
    assert_signed(seen, signing_key, dest)


async def test_well_known_delegation_with_port(pki, server, wk_server, signing_key) -> None:
    async def wk(request: web.Request) -> web.StreamResponse:
        # content-type is not JSON on purpose: the body is parsed as JSON anyway
        return web.Response(
            text=json.dumps({"m.server": f"delegated.test:{server.port}"}),
            content_type="text/plain",
        )

    wk_server.responder = wk
    dns = loopback_dns("wk.test", "delegated.test")
    async with make_client(signing_key, make_options(pki, wk_server.port), dns) as client:
        await client.get_json("wk.test", "/_matrix/federation/v1/version")
        await client.get_json("wk.test", "/_matrix/federation/v1/version")
    assert [r.raw_path for r in wk_server.requests] == ["/.well-known/matrix/server"]  # cached
    assert wk_server.sni == ["wk.test"]
    assert len(server.requests) == 2
    seen = server.requests[0]
    assert seen.headers["Host"] == f"delegated.test:{server.port}"  # step 3.2
    assert server.sni == ["delegated.test"]
    assert_signed(seen, signing_key, "wk.test")  # destination: the original name


async def test_well_known_then_srv(pki, server, wk_server, signing_key) -> None:
    async def wk(request: web.Request) -> web.StreamResponse:
        return web.json_response({"m.server": "delegated.test"})

    wk_server.responder = wk
    dns = loopback_dns(
        "wk2.test",
        "target.test",
        srv={"_matrix-fed._tcp.delegated.test": [(1, 0, server.port, "target.test")]},
    )
    async with make_client(signing_key, make_options(pki, wk_server.port), dns) as client:
        await client.get_json("wk2.test", "/_matrix/federation/v1/version")
    seen = server.requests[0]
    assert seen.headers["Host"] == "delegated.test"  # step 3.3
    assert server.sni == ["delegated.test"]
    assert_signed(seen, signing_key, "wk2.test")
    assert ("SRV", "_matrix-fed._tcp.delegated.test") in dns.queries


async def test_legacy_srv_when_no_well_known(pki, server, wk_server, signing_key) -> None:
    async def wk(request: web.Request) -> web.StreamResponse:
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    wk_server.responder = wk
    dns = loopback_dns(
        "legacy.test",
        "target.test",
        srv={"_matrix._tcp.legacy.test": [(1, 0, server.port, "target.test")]},
    )
    async with make_client(signing_key, make_options(pki, wk_server.port), dns) as client:
        await client.get_json("legacy.test", "/_matrix/federation/v1/version")
        await client.get_json("legacy.test", "/_matrix/federation/v1/version")
    assert len(wk_server.requests) == 1  # the failure is cached too
    assert server.requests[0].headers["Host"] == "legacy.test"  # step 5
    assert server.sni == ["legacy.test"]
    assert dns.queries.index(("SRV", "_matrix-fed._tcp.legacy.test")) < dns.queries.index(
        ("SRV", "_matrix._tcp.legacy.test")
    )


async def test_well_known_redirect_followed(pki, server, wk_server, signing_key) -> None:
    async def wk(request: web.Request) -> web.StreamResponse:
        if request.path == "/.well-known/matrix/server":
            raise web.HTTPFound(f"https://wk.test:{wk_server.port}/real")
        return web.Response(body=json.dumps({"m.server": f"delegated.test:{server.port}"}).encode())

    wk_server.responder = wk
    dns = loopback_dns("redir.test", "wk.test", "delegated.test")
    async with make_client(signing_key, make_options(pki, wk_server.port), dns) as client:
        await client.get_json("redir.test", "/_matrix/federation/v1/version")
    assert [r.raw_path for r in wk_server.requests] == ["/.well-known/matrix/server", "/real"]
    assert server.requests[0].headers["Host"] == f"delegated.test:{server.port}"


async def test_well_known_redirect_loop_and_big_body_fail(pki, wk_server, signing_key) -> None:
    async def wk(request: web.Request) -> web.StreamResponse:
        if request.host.startswith("loop.test"):
            raise web.HTTPFound("/.well-known/matrix/server")
        return web.Response(
            body=b'{"m.server": "delegated.test:1", "pad": "' + b"x" * 60000 + b'"}'
        )

    wk_server.responder = wk
    dns = loopback_dns("loop.test", "big.test")
    async with make_client(signing_key, make_options(pki, wk_server.port), dns) as client:
        assert await client.resolver.get_well_known("loop.test") is None
        assert await client.resolver.get_well_known("big.test") is None
    assert len(wk_server.requests) == 2


async def test_well_known_failures_say_why_and_list_hops(pki, wk_server, signing_key) -> None:
    async def wk(request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0]
        if host == "loop.test":
            raise web.HTTPFound("/.well-known/matrix/server")
        if host == "redir.test":  # a fresh URL every time: never a loop, never an end
            raise web.HTTPFound(f"/hop{len(wk_server.requests)}")
        if host == "big.test":
            return web.Response(text="<html>Welcome</html>", content_type="text/html")
        if host == "wk.test":
            return web.json_response({"m.server": "not a server name!"})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    wk_server.responder = wk
    dns = loopback_dns("loop.test", "redir.test", "big.test", "wk.test", "fed.test")
    async with make_client(signing_key, make_options(pki, wk_server.port), dns) as client:
        fetcher = client.resolver.well_known
        assert fetcher is not None
        loop = await fetcher.fetch("loop.test")
        endless = await fetcher.fetch("redir.test")
        html = await fetcher.fetch("big.test")
        invalid = await fetcher.fetch("wk.test")
        missing = await fetcher.fetch("fed.test")
    assert loop.failure is WellKnownFailure.REDIRECT_LOOP
    assert [hop.status for hop in loop.hops] == [302]
    assert endless.failure is WellKnownFailure.TOO_MANY_REDIRECTS
    assert len(endless.hops) == 6 and all(hop.location for hop in endless.hops)
    assert html.failure is WellKnownFailure.NOT_JSON
    assert html.hops[-1].content_type == "text/html; charset=utf-8"
    assert invalid.failure is WellKnownFailure.INVALID
    assert missing.failure is WellKnownFailure.HTTP_STATUS and missing.hops[-1].status == 404


async def test_well_known_refused_and_blocked_are_told_apart(
    pki, signing_key, refused_port
) -> None:
    dns = StaticDnsResolver(hosts={"fed.test": ["127.0.0.1"], "target.test": ["10.1.2.3"]})
    async with make_client(signing_key, make_options(pki, refused_port), dns) as client:
        fetcher = client.resolver.well_known
        assert fetcher is not None
        refused = await fetcher.fetch("fed.test")
        blocked = await fetcher.fetch("target.test")
    assert refused.failure is WellKnownFailure.CONNECTION_REFUSED and refused.temporary
    assert blocked.failure is WellKnownFailure.BLOCKED and not blocked.temporary


def test_classify_transport_error_follows_the_cause_chain() -> None:
    def chained(inner: BaseException) -> DestinationUnreachableError:
        try:
            raise inner
        except BaseException as exc:
            try:
                raise DestinationUnreachableError("wrapped") from exc
            except DestinationUnreachableError as outer:
                return outer

    assert classify_transport_error(chained(ConnectionRefusedError())) is (
        TransportFailure.CONNECTION_REFUSED
    )
    assert classify_transport_error(chained(TimeoutError())) is TransportFailure.TIMEOUT
    assert classify_transport_error(chained(ssl.SSLCertVerificationError())) is (
        TransportFailure.TLS_CERTIFICATE
    )
    assert classify_transport_error(chained(ssl.SSLError())) is TransportFailure.TLS
    assert classify_transport_error(RuntimeError()) is TransportFailure.OTHER


# ---------------------------------------------------------------------------
# IP blocking
# ---------------------------------------------------------------------------


async def test_loopback_blocked_by_default(pki, server, wk_server, signing_key) -> None:
    opts = make_options(pki, wk_server.port, allowed_ip_ranges=[])
    dns = loopback_dns("fed.test", "wk.test")
    async with make_client(signing_key, opts, dns) as client:
        with pytest.raises(FederationDeniedError):
            await client.get_json(f"127.0.0.1:{server.port}", "/_matrix/federation/v1/version")
        with pytest.raises(FederationDeniedError):
            await client.get_json(f"fed.test:{server.port}", "/_matrix/federation/v1/version")
        # well-known fetch is refused too, then the A-record fallback is refused
        with pytest.raises(FederationDeniedError):
            await client.get_json("wk.test", "/_matrix/federation/v1/version")
        # and an IPv4-mapped IPv6 address does not sneak past
        with pytest.raises(FederationDeniedError):
            await client.get_json(f"[::ffff:127.0.0.1]:{server.port}", "/x")
    assert server.requests == [] and server.sni == []
    assert wk_server.requests == [] and wk_server.sni == []


async def test_invalid_server_name_denied(signing_key) -> None:
    async with make_client(signing_key, make_options()) as client:
        for bad in ["", "exa mple.org", "foo:bar", "a.org:99999", "[::1"]:
            with pytest.raises(FederationDeniedError):
                await client.get_json(bad, "/_matrix/federation/v1/version")


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


async def test_tls_verification_fails_without_ca(server, signing_key) -> None:
    async with make_client(signing_key, make_options(None)) as client:
        with pytest.raises(TlsVerificationError):
            await client.get_json(f"fed.test:{server.port}", "/_matrix/federation/v1/version")
    assert server.requests == []  # no request was sent before the cert check


async def test_tls_verification_hostname_mismatch(pki, server, signing_key) -> None:
    dns = loopback_dns("notincert.test")
    async with make_client(signing_key, make_options(pki), dns) as client:
        with pytest.raises(TlsVerificationError):
            await client.get_json(f"notincert.test:{server.port}", "/x")
    assert server.requests == []


async def test_verify_tls_off_accepts_self_signed(server, signing_key) -> None:
    async with make_client(signing_key, make_options(None, verify_tls=False)) as client:
        assert await client.get_json(f"fed.test:{server.port}", "/x") == {"ok": True}


# ---------------------------------------------------------------------------
# Connection reuse, retries, errors, timeouts
# ---------------------------------------------------------------------------


async def test_connection_reused(pki, server, signing_key) -> None:
    async with make_client(signing_key, make_options(pki)) as client:
        for _ in range(4):
            await client.get_json(f"fed.test:{server.port}", "/_matrix/federation/v1/version")
    assert len(server.requests) == 4
    assert len(server.peers) == 1
    assert len(server.sni) == 1  # one TLS handshake


def flaky(statuses: list[int], body: dict | None = None, headers: dict | None = None):
    remaining = list(statuses)

    async def responder(request: web.Request) -> web.StreamResponse:
        if remaining:
            status = remaining.pop(0)
            return web.json_response(
                body or {"errcode": "M_UNKNOWN", "error": "try later"},
                status=status,
                headers=headers,
            )
        return web.json_response({"ok": True})

    return responder


async def test_get_retried_on_503_then_succeeds(pki, server, signing_key) -> None:
    server.responder = flaky([503, 502])
    async with make_client(signing_key, make_options(pki)) as client:
        assert await client.get_json(f"fed.test:{server.port}", "/x") == {"ok": True}
    assert len(server.requests) == 3
    # every attempt carries the same signed request target
    assert len({r.headers["Authorization"] for r in server.requests}) == 1


async def test_put_not_retried_unless_idempotent(pki, server, signing_key) -> None:
    server.responder = flaky([503])
    dest = f"fed.test:{server.port}"
    async with make_client(signing_key, make_options(pki)) as client:
        with pytest.raises(HttpResponseError) as ei:
            await client.put_json(dest, "/x", {"a": 1})
        assert ei.value.status == 503 and ei.value.errcode == "M_UNKNOWN"
        assert len(server.requests) == 1
        server.responder = flaky([503])
        assert await client.put_json(dest, "/x", {"a": 1}, idempotent=True) == {"ok": True}
        assert len(server.requests) == 3
        server.responder = flaky([500])
        resp = await client.request("POST", dest, "/x", json_body={})
        assert resp.status == 500
        assert len(server.requests) == 4


async def test_retries_give_up_and_return_last_response(pki, server, signing_key) -> None:
    server.responder = flaky([503] * 10)
    async with make_client(signing_key, make_options(pki, max_retries=2)) as client:
        resp = await client.request("GET", f"fed.test:{server.port}", "/x")
    assert resp.status == 503
    assert len(server.requests) == 3


async def test_429_retry_after_ms_honoured(pki, server, signing_key) -> None:
    server.responder = flaky(
        [429], body={"errcode": "M_LIMIT_EXCEEDED", "error": "slow", "retry_after_ms": 300}
    )
    async with make_client(signing_key, make_options(pki)) as client:
        start = time.monotonic()
        assert await client.get_json(f"fed.test:{server.port}", "/x") == {"ok": True}
        assert time.monotonic() - start >= 0.3


async def test_retry_after_beyond_deadline_not_waited(pki, server, signing_key) -> None:
    server.responder = flaky([503], headers={"Retry-After": "30"})
    async with make_client(signing_key, make_options(pki)) as client:
        # Waiting 30 s would end in a timeout error, not the 503 itself.
        with pytest.raises(HttpResponseError) as ei:
            await client.get_json(f"fed.test:{server.port}", "/x", timeout=2)
    assert ei.value.status == 503 and ei.value.retry_after_ms == 30000
    assert len(server.requests) == 1


async def test_http_error_fields(pki, server, signing_key) -> None:
    async def forbidden(request: web.Request) -> web.StreamResponse:
        return web.json_response({"errcode": "M_FORBIDDEN", "error": "nope"}, status=403)

    server.responder = forbidden
    async with make_client(signing_key, make_options(pki)) as client:
        with pytest.raises(HttpResponseError) as ei:
            await client.get_json(f"fed.test:{server.port}", "/x")
    err = ei.value
    assert (err.status, err.errcode, err.error, err.body) == (
        403,
        "M_FORBIDDEN",
        "nope",
        {"errcode": "M_FORBIDDEN", "error": "nope"},
    )
    assert len(server.requests) == 1  # 4xx is never retried


async def test_non_json_2xx_is_invalid(pki, server, signing_key) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>", content_type="text/html")

    server.responder = html
    async with make_client(signing_key, make_options(pki)) as client:
        with pytest.raises(InvalidResponseError):
            await client.get_json(f"fed.test:{server.port}", "/x")


async def test_timeout(pki, server, signing_key) -> None:
    never = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.json_response({})

    server.responder = slow
    async with make_client(signing_key, make_options(pki)) as client:
        with pytest.raises(RequestTimeoutError):
            await client.get_json(f"fed.test:{server.port}", "/x", timeout=0.3)
    never.set()


async def test_connection_refused_is_unreachable_after_retries(
    signing_key, refused_port: int
) -> None:
    port = refused_port
    async with make_client(signing_key, make_options()) as client:
        with pytest.raises(DestinationUnreachableError) as ei:
            await client.get_json(f"fed.test:{port}", "/x")
    assert ei.value.destination == f"fed.test:{port}"


async def test_dns_failure_is_unreachable(signing_key) -> None:
    async with make_client(signing_key, make_options()) as client:
        with pytest.raises(DestinationUnreachableError):
            await client.get_json("nxdomain.test:8448", "/x")


async def test_backoff_check_fails_fast(pki, server, signing_key) -> None:
    calls: list[str] = []

    def check(destination: str) -> float | None:
        calls.append(destination)
        return 42.0 if destination.startswith("fed.test") else None

    async def acheck(destination: str) -> float | None:
        return 5.0

    dest = f"fed.test:{server.port}"
    async with make_client(signing_key, make_options(pki), backoff_check=check) as client:
        with pytest.raises(NotRetryingDestination) as ei:
            await client.get_json(dest, "/x")
        assert ei.value.retry_in == 42.0
        assert server.requests == []
        assert await client.get_json(dest, "/x", ignore_backoff=True) == {"ok": True}
    assert calls == [dest]
    async with make_client(signing_key, make_options(pki), backoff_check=acheck) as client:
        with pytest.raises(NotRetryingDestination):
            await client.get_json(dest, "/x")


async def test_path_with_query_rejected(signing_key) -> None:
    async with make_client(signing_key, make_options()) as client:
        with pytest.raises(ValueError):
            await client.get_json("fed.test", "/x?a=b")


def test_ssl_context_options(pki) -> None:
    ctx = build_ssl_context(
        OutboundOptions(ca_file=pki.ca_file, client_cert=(pki.cert_file, pki.key_file))
    )
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    off = build_ssl_context(OutboundOptions(verify_tls=False))
    assert not off.check_hostname and off.verify_mode == ssl.CERT_NONE
