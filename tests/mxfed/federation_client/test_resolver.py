"""Server discovery (https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names),
well-known caching, SRV handling and the IP policy."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from mxfed.federation_client import (
    DEFAULT_BLOCKED_IP_RANGES,
    AiodnsResolver,
    DestinationUnreachableError,
    DiscoveryRule,
    DiscoveryTrail,
    DnsLookupError,
    FederationDeniedError,
    IpFilter,
    ResolvedServer,
    ServerResolver,
    SrvRecord,
    StaticDnsResolver,
    WellKnownFailure,
    WellKnownResponse,
)
from mxfed.federation_client.resolver import (
    cache_period_from_headers,
    order_srv_records,
    parse_well_known_body,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeWellKnown:
    """Answers from a per-host script; records every fetch."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers: dict[str, Any] = dict(answers or {})
        self.fetches: list[str] = []

    async def fetch(self, hostname: str) -> WellKnownResponse:
        self.fetches.append(hostname)
        answer = self.answers.get(hostname, WellKnownResponse(None, error="404"))
        if isinstance(answer, list):
            answer = answer.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, str):
            return WellKnownResponse(answer)
        return answer


def make(
    wk: dict[str, Any] | None = None, srv: dict[str, Any] | None = None
) -> tuple[ServerResolver, FakeWellKnown, StaticDnsResolver, Clock]:
    fetcher = FakeWellKnown(wk)
    dns = StaticDnsResolver(srv=srv or {})
    clock = Clock()
    return ServerResolver(dns, fetcher, clock=clock, rng=random.Random(1)), fetcher, dns, clock


# ---------------------------------------------------------------------------
# The discovery table
# ---------------------------------------------------------------------------


async def test_step1_ip_literals() -> None:
    r, fetcher, dns, _ = make()
    assert await r.resolve("1.2.3.4") == ResolvedServer(
        "1.2.3.4", "1.2.3.4", None, [("1.2.3.4", 8448)]
    )
    assert await r.resolve("1.2.3.4:99") == ResolvedServer(
        "1.2.3.4:99", "1.2.3.4:99", None, [("1.2.3.4", 99)]
    )
    res = await r.resolve("[2001:db8::1]:1234")
    assert res.host_header == "[2001:db8::1]:1234"
    assert res.tls_server_name is None
    assert res.targets == [("2001:db8::1", 1234)]
    assert (await r.resolve("[::1]")).targets == [("::1", 8448)]
    assert fetcher.fetches == [] and dns.queries == []


async def test_step2_explicit_port() -> None:
    r, fetcher, dns, _ = make()
    res = await r.resolve("example.org:8449")
    assert res == ResolvedServer(
        "example.org:8449", "example.org:8449", "example.org", [("example.org", 8449)]
    )
    assert fetcher.fetches == [] and dns.queries == []


async def test_step3_well_known_variants() -> None:
    r, _, _, _ = make(
        wk={
            "a.org": "5.6.7.8",
            "b.org": "[2001:db8::2]:444",
            "c.org": "matrix.c.org:443",
            "d.org": "matrix.d.org",
            "e.org": "matrix.e.org",
            "f.org": "matrix.f.org",
        },
        srv={
            "_matrix-fed._tcp.matrix.d.org": [(10, 0, 8443, "fed.d.org")],
            "_matrix._tcp.matrix.d.org": [(10, 0, 9999, "legacy.d.org")],
            "_matrix._tcp.matrix.e.org": [(10, 0, 7777, "legacy.e.org")],
            "_matrix-fed._tcp.f.org": [(10, 0, 1111, "wrong.f.org")],
        },
    )
    # 3.1 IP, no port
    assert await r.resolve("a.org") == ResolvedServer("a.org", "5.6.7.8", None, [("5.6.7.8", 8448)])
    # 3.1 IPv6 with port
    assert await r.resolve("b.org") == ResolvedServer(
        "b.org", "[2001:db8::2]:444", None, [("2001:db8::2", 444)]
    )
    # 3.2 name and port: Host dh:dp, cert dh
    assert await r.resolve("c.org") == ResolvedServer(
        "c.org", "matrix.c.org:443", "matrix.c.org", [("matrix.c.org", 443)]
    )
    # 3.3 _matrix-fed SRV of the delegated name wins over _matrix
    assert await r.resolve("d.org") == ResolvedServer(
        "d.org", "matrix.d.org", "matrix.d.org", [("fed.d.org", 8443)], srv=True
    )
    # 3.4 legacy SRV
    assert await r.resolve("e.org") == ResolvedServer(
        "e.org", "matrix.e.org", "matrix.e.org", [("legacy.e.org", 7777)], srv=True
    )
    # 3.5 no SRV for the delegated name: 8448 (the original name's SRV is not used)
    assert await r.resolve("f.org") == ResolvedServer(
        "f.org", "matrix.f.org", "matrix.f.org", [("matrix.f.org", 8448)]
    )


async def test_steps_4_to_6_without_well_known() -> None:
    r, fetcher, dns, _ = make(
        srv={
            "_matrix-fed._tcp.g.org": [(10, 0, 8443, "fed.g.org")],
            "_matrix._tcp.g.org": [(10, 0, 1, "never.g.org")],
            "_matrix._tcp.h.org": [(10, 0, 7000, "legacy.h.org")],
        }
    )
    assert await r.resolve("g.org") == ResolvedServer(
        "g.org", "g.org", "g.org", [("fed.g.org", 8443)], srv=True
    )
    assert await r.resolve("h.org") == ResolvedServer(
        "h.org", "h.org", "h.org", [("legacy.h.org", 7000)], srv=True
    )
    assert await r.resolve("i.org") == ResolvedServer("i.org", "i.org", "i.org", [("i.org", 8448)])
    assert fetcher.fetches == ["g.org", "h.org", "i.org"]
    assert ("SRV", "_matrix._tcp.g.org") not in dns.queries


async def test_invalid_well_known_server_ignored() -> None:
    for body in [
        b"not json",
        b"[]",
        b"{}",
        b'{"m.server": 5}',
        b'{"m.server": "bad name!"}',
        b'{"m.server": ""}',
        b'{"m.server": "x.org:0"}',
    ]:
        with pytest.raises(ValueError):
            parse_well_known_body(body)
    assert parse_well_known_body(b'{"m.server": "matrix.x.org:443", "other": 1}') == (
        "matrix.x.org:443"
    )
    with pytest.raises(ValueError):
        parse_well_known_body(b'{"m.server": "a.org", "pad": "' + b"x" * 51200 + b'"}')


async def test_invalid_server_name_denied() -> None:
    r, _, _, _ = make()
    for bad in ["", "a b", "a.org:", "a.org:70000", "[1.2.3.4]", "ex@mple.org"]:
        with pytest.raises(FederationDeniedError):
            await r.resolve(bad)


async def test_srv_dot_target_means_unavailable() -> None:
    r, _, _, _ = make(srv={"_matrix-fed._tcp.j.org": [(0, 0, 0, ".")]})
    with pytest.raises(DestinationUnreachableError):
        await r.resolve("j.org")


async def test_srv_ordering_and_caching() -> None:
    records = [
        SrvRecord(20, 0, 3, "c.k.org", ttl=600),
        SrvRecord(10, 5, 1, "a.k.org", ttl=600),
        SrvRecord(10, 0, 2, "b.k.org", ttl=600),
    ]
    r, _, dns, clock = make(srv={"_matrix-fed._tcp.k.org": records})
    res = await r.resolve("k.org")
    assert res.targets[-1] == ("c.k.org", 3)  # higher priority value last
    assert {t for t in res.targets[:2]} == {("a.k.org", 1), ("b.k.org", 2)}
    n = len(dns.queries)
    await r.resolve("k.org")
    assert len(dns.queries) == n  # SRV answer cached for its TTL
    clock.now += 601
    r.well_known = None  # isolate the SRV cache from the well-known cache
    await r.resolve("k.org")
    assert len(dns.queries) == n + 1


def test_order_srv_records_weights() -> None:
    rng = random.Random(7)
    recs = [SrvRecord(1, 90, 1, "heavy"), SrvRecord(1, 10, 2, "light"), SrvRecord(0, 0, 3, "first")]
    firsts_after_prio0 = [order_srv_records(recs, rng)[1].target for _ in range(500)]
    assert all(order_srv_records(recs, rng)[0].target == "first" for _ in range(50))
    assert 350 < firsts_after_prio0.count("heavy") < 490


class FailingDns(StaticDnsResolver):
    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        raise DnsLookupError("SERVFAIL")


async def test_srv_temporary_failure_is_unreachable() -> None:
    r = ServerResolver(FailingDns(), None)
    with pytest.raises(DestinationUnreachableError):
        await r.resolve("l.org")


# ---------------------------------------------------------------------------
# Well-known caching
# ---------------------------------------------------------------------------


async def test_well_known_default_ttl_24h_with_jitter() -> None:
    r, fetcher, _, clock = make(wk={"m.org": "matrix.m.org:443"})
    assert await r.get_well_known("m.org") == "matrix.m.org:443"
    clock.now += 17 * 3600  # refresh starts with 20 % of the (≥ 21.6 h) TTL left
    assert await r.get_well_known("m.org") == "matrix.m.org:443"
    assert fetcher.fetches == ["m.org"]
    clock.now += 5 * 3600  # 22 h: past 80 % of the largest possible TTL (26.4 h)
    await r.get_well_known("m.org")
    assert fetcher.fetches == ["m.org", "m.org"]


@pytest.mark.parametrize(
    ("period", "still_cached_at", "refetched_at"),
    [
        (10.0, 200.0, 250.0),  # clamped up to 5 min (refresh at 4 min)
        (3600.0, 2800.0, 2900.0),  # honoured (refresh at 48 min)
        (10**7, 38 * 3600.0, 39 * 3600.0),  # clamped down to 48 h (refresh at 38.4 h)
        (0.0, 200.0, 250.0),  # no-store → minimum
    ],
)
async def test_well_known_cache_headers_clamped(
    period: float, still_cached_at: float, refetched_at: float
) -> None:
    r, fetcher, _, clock = make(wk={"n.org": WellKnownResponse("x.n.org", cache_period=period)})
    start = clock.now
    await r.get_well_known("n.org")
    clock.now = start + still_cached_at
    await r.get_well_known("n.org")
    assert len(fetcher.fetches) == 1
    clock.now = start + refetched_at
    await r.get_well_known("n.org")
    assert len(fetcher.fetches) == 2


async def test_well_known_failure_cached_one_hour() -> None:
    r, fetcher, _, clock = make()
    assert await r.get_well_known("o.org") is None
    clock.now += 3599
    assert await r.get_well_known("o.org") is None
    assert len(fetcher.fetches) == 1
    clock.now += 2
    await r.get_well_known("o.org")
    assert len(fetcher.fetches) == 2


async def test_well_known_failure_after_success_backs_off_exponentially() -> None:
    ok = WellKnownResponse("x.p.org", cache_period=600)
    bad = WellKnownResponse(None, error="404")
    r, fetcher, _, clock = make(wk={"p.org": [ok, bad, bad, bad, ok]})
    assert await r.get_well_known("p.org") == "x.p.org"
    clock.now += 600  # expired → refetch → 404 (not temporary): delegation dropped
    assert await r.get_well_known("p.org") is None
    # recently valid: first failure cached 2 min, then 4 min, ...
    clock.now += 119
    await r.get_well_known("p.org")
    assert len(fetcher.fetches) == 2
    clock.now += 2
    await r.get_well_known("p.org")
    assert len(fetcher.fetches) == 3
    clock.now += 239
    await r.get_well_known("p.org")
    assert len(fetcher.fetches) == 3
    clock.now += 2
    await r.get_well_known("p.org")
    assert len(fetcher.fetches) == 4


async def test_temporary_failure_keeps_previous_result() -> None:
    ok = WellKnownResponse("x.q.org", cache_period=1000)
    temp = WellKnownResponse(None, temporary=True, error="503")
    r, fetcher, _, clock = make(wk={"q.org": [ok, temp, ConnectionError("boom")]})
    await r.get_well_known("q.org")
    clock.now += 850  # in the refresh window, not expired
    assert await r.get_well_known("q.org") == "x.q.org"
    assert len(fetcher.fetches) == 2
    clock.now += 50  # still within the short failure period: no refetch
    assert await r.get_well_known("q.org") == "x.q.org"
    assert len(fetcher.fetches) == 2
    clock.now += 90  # 990 s: retried, raised → temporary → previous still used
    assert await r.get_well_known("q.org") == "x.q.org"
    assert len(fetcher.fetches) == 3


async def test_concurrent_lookups_share_one_fetch() -> None:
    class Slow(FakeWellKnown):
        async def fetch(self, hostname: str) -> WellKnownResponse:
            await asyncio.sleep(0.05)
            return await super().fetch(hostname)

    fetcher = Slow({"r.org": "x.r.org"})
    r = ServerResolver(StaticDnsResolver(), fetcher)
    results = await asyncio.gather(*(r.get_well_known("r.org") for _ in range(5)))
    assert results == ["x.r.org"] * 5
    assert fetcher.fetches == ["r.org"]


def test_cache_period_from_headers() -> None:
    now = 1_700_000_000.0
    assert cache_period_from_headers({}, now) is None
    assert cache_period_from_headers({"Cache-Control": "public, max-age=3600"}, now) == 3600
    assert cache_period_from_headers({"Cache-Control": "no-store"}, now) == 0
    expires = "Tue, 14 Nov 2023 23:13:20 GMT"  # now + 1 h
    assert cache_period_from_headers({"Expires": expires}, now) == pytest.approx(3600)
    assert cache_period_from_headers({"Expires": "garbage"}, now) == 0


# ---------------------------------------------------------------------------
# IP policy and DNS resolvers
# ---------------------------------------------------------------------------


def test_ip_filter_defaults() -> None:
    f = IpFilter(DEFAULT_BLOCKED_IP_RANGES)
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.1.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "224.0.0.1",
        "not an ip",
    ]:
        assert not f.is_allowed(ip), ip
    for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]:
        assert f.is_allowed(ip), ip
    with pytest.raises(FederationDeniedError):
        f.check("127.0.0.1", destination="x")


def test_ip_filter_allow_list_wins() -> None:
    f = IpFilter(DEFAULT_BLOCKED_IP_RANGES, ["127.0.0.1/32", "10.5.0.0/16"])
    assert f.is_allowed("127.0.0.1")
    assert f.is_allowed("10.5.1.1")
    assert not f.is_allowed("127.0.0.2")
    assert not f.is_allowed("10.6.0.1")
    assert IpFilter([], []).is_allowed("127.0.0.1")


async def test_static_dns_resolver() -> None:
    dns = StaticDnsResolver(
        hosts={"a.test": ["127.0.0.1"]}, srv={"_matrix-fed._tcp.a.test": [(1, 2, 3, "t.test")]}
    )
    assert await dns.resolve_host("a.test") == ["127.0.0.1"]
    assert await dns.resolve_host("127.0.0.2") == ["127.0.0.2"]
    assert await dns.resolve_srv("_matrix-fed._tcp.a.test") == [SrvRecord(1, 2, 3, "t.test")]
    assert await dns.resolve_srv("_matrix._tcp.a.test") == []
    with pytest.raises(DnsLookupError) as ei:
        await dns.resolve_host("b.test")
    assert ei.value.not_found


async def test_aiodns_resolver_localhost() -> None:
    """c-ares answers ``localhost`` locally (hosts file / RFC 6761): no network."""
    dns = AiodnsResolver(timeout=2.0)
    ips = await dns.resolve_host("localhost")
    assert set(ips) & {"127.0.0.1", "::1"}
    await dns.close()


# ---------------------------------------------------------------------------
# The discovery trail (what resolve() chose and why) and IP decisions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("1.2.3.4", DiscoveryRule.IP_LITERAL),
        ("a.org:8000", DiscoveryRule.EXPLICIT_PORT),
        ("ip.org", DiscoveryRule.DELEGATED_IP_LITERAL),
        ("port.org", DiscoveryRule.DELEGATED_EXPLICIT_PORT),
        ("srv.org", DiscoveryRule.DELEGATED_SRV),
        ("plain.org", DiscoveryRule.DELEGATED_DEFAULT_PORT),
        ("own-srv.org", DiscoveryRule.SRV),
        ("nothing.org", DiscoveryRule.DEFAULT_PORT),
    ],
)
async def test_trail_names_the_rule(name: str, rule: DiscoveryRule) -> None:
    r, *_ = make(
        wk={
            "ip.org": "5.6.7.8",
            "port.org": "m.port.org:443",
            "srv.org": "m.srv.org",
            "plain.org": "m.plain.org",
        },
        srv={
            "_matrix-fed._tcp.m.srv.org": [(1, 0, 8000, "t.srv.org")],
            "_matrix-fed._tcp.own-srv.org": [(1, 0, 8001, "t.own-srv.org")],
        },
    )
    trail = DiscoveryTrail()
    await r.resolve(name, trail=trail)
    assert trail.rule is rule


async def test_trail_records_well_known_and_both_srv_queries() -> None:
    r, *_ = make(
        wk={"x.org": WellKnownResponse(None, error="not JSON", failure=WellKnownFailure.NOT_JSON)},
        srv={"_matrix._tcp.x.org": [(1, 0, 9000, "t.x.org")]},
    )
    trail = DiscoveryTrail()
    resolved = await r.resolve("x.org", trail=trail)
    assert resolved.targets == [("t.x.org", 9000)]
    assert trail.well_known is not None and trail.well_known.failure is WellKnownFailure.NOT_JSON
    assert trail.delegated is None
    assert [(q.name, len(q.records), q.deprecated) for q in trail.srv_lookups] == [
        ("_matrix-fed._tcp.x.org", 0, False),
        ("_matrix._tcp.x.org", 1, True),
    ]
    assert trail.rule is DiscoveryRule.SRV
    # Resolved again from the caches: the trail says so and keeps the same facts.
    again = DiscoveryTrail()
    await r.resolve("x.org", trail=again)
    assert again.well_known_from_cache
    assert again.well_known is not None and again.well_known.failure is WellKnownFailure.NOT_JSON
    assert [(q.name, q.from_cache) for q in again.srv_lookups] == [("_matrix._tcp.x.org", True)]


def test_ip_filter_explains_which_range_decided() -> None:
    f = IpFilter(DEFAULT_BLOCKED_IP_RANGES, ["127.0.0.1/32"])
    blocked = f.explain("10.1.2.3")
    assert (blocked.allowed, blocked.blocked_by, blocked.allowed_by) == (False, "10.0.0.0/8", None)
    allowed = f.explain("127.0.0.1")
    assert (allowed.allowed, allowed.blocked_by, allowed.allowed_by) == (
        True,
        "127.0.0.0/8",
        "127.0.0.1/32",
    )
    mapped = f.explain("::ffff:192.168.1.1")
    assert not mapped.allowed and mapped.blocked_by == "192.168.0.0/16"
    public = f.explain("8.8.8.8")
    assert public.allowed and public.blocked_by is None
    assert not f.explain("not-an-ip").allowed
