"""Server discovery and the IP range policy for outbound traffic.

Spec: https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names

Everything that does I/O is injectable:

* :class:`DnsResolver` — SRV and A/AAAA lookups. :class:`AiodnsResolver` is
  the production one; :class:`StaticDnsResolver` maps names to loopback
  addresses in tests without touching real DNS.
* :class:`WellKnownFetcher` — fetches ``https://<host>/.well-known/matrix/server``.
  The HTTP implementation lives in :mod:`.client` (it shares the client's
  connection pool and IP policy); tests may pass any object with ``fetch``.

:class:`ServerResolver` combines them, caches well-known results (success and
failure) and SRV answers, and returns a :class:`ResolvedServer`. Given a
:class:`DiscoveryTrail`, it also records what it looked at and which row of the
spec's discovery table chose the targets (``mxfed doctor`` explains that), and
:meth:`IpFilter.explain` says which range blocks or allows an address.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.server_names import (
    is_connectable_port,
    is_valid_server_name,
    parse_server_name,
)
from mxfed.blocked_ranges import DEFAULT_BLOCKED_IP_RANGES
from mxfed.bounded import BoundedDict

from .errors import DestinationUnreachableError, FederationDeniedError

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448

# ---------------------------------------------------------------------------
# IP range policy
# ---------------------------------------------------------------------------


def is_ip_address(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (brackets allowed around IPv6)."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class IpDecision:
    """Why an address may or may not be connected to.

    ``blocked_by`` is the first blocked range holding the address (or its
    IPv4 form), ``allowed_by`` the first allowed range, which wins.
    """

    address: str
    allowed: bool
    blocked_by: str | None = None
    allowed_by: str | None = None


class IpFilter:
    """Decides whether an IP address may be connected to.

    The allow-list wins over the block-list. IPv4-mapped/compatible IPv6
    addresses (``::ffff:127.0.0.1``) are judged by their IPv4 address too, so
    they cannot be used to sneak past an IPv4 block.
    """

    def __init__(self, blocked: Iterable[str], allowed: Iterable[str] = ()) -> None:
        self.blocked: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(r, strict=False) for r in blocked
        )
        self.allowed: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(r, strict=False) for r in allowed
        )

    @staticmethod
    def _variants(addr: _Address) -> list[_Address]:
        out: list[_Address] = [addr]
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                out.append(addr.ipv4_mapped)
            elif addr.sixtofour is not None:
                out.append(addr.sixtofour)
        return out

    @staticmethod
    def _first(variants: list[_Address], nets: tuple[_Network, ...]) -> _Network | None:
        for net in nets:
            if any(a.version == net.version and a in net for a in variants):
                return net
        return None

    def explain(self, ip: str) -> IpDecision:
        """Whether ``ip`` may be connected to, and the range that decided it.

        Something that is not an IP address is never allowed.
        """
        try:
            addr = ipaddress.ip_address(ip.strip("[]").split("%", 1)[0])
        except ValueError:
            return IpDecision(ip, False)
        variants = self._variants(addr)
        blocked_by = self._first(variants, self.blocked)
        allowed_by = self._first(variants, self.allowed)
        return IpDecision(
            ip,
            allowed_by is not None or blocked_by is None,
            str(blocked_by) if blocked_by is not None else None,
            str(allowed_by) if allowed_by is not None else None,
        )

    def is_allowed(self, ip: str) -> bool:
        return self.explain(ip).allowed

    def check(self, ip: str, *, destination: str | None = None) -> None:
        """Raise :class:`FederationDeniedError` if ``ip`` is blocked."""
        if not self.is_allowed(ip):
            raise FederationDeniedError(
                f"refusing to connect to blocked IP address {ip}", destination=destination
            )


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str
    ttl: int | None = None


class DnsLookupError(DestinationUnreachableError):
    """A DNS query failed. ``not_found`` is true for NXDOMAIN/NODATA."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class DnsResolver(Protocol):
    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        """SRV records of ``name``; ``[]`` when the name or record does not exist.

        Raise :class:`DnsLookupError` for temporary failures (timeout, SERVFAIL).
        """
        ...

    async def resolve_host(self, host: str) -> list[str]:
        """A/AAAA addresses of ``host`` (CNAMEs followed) as IP strings.

        Raise :class:`DnsLookupError` if there are none.
        """
        ...

    async def resolve_cname(self, name: str) -> str | None:
        """The CNAME target of ``name``, or ``None`` when it has no CNAME record.

        Only diagnostics ask (an SRV target must not be an alias, RFC 2782).
        Raise :class:`DnsLookupError` for temporary failures.
        """
        ...


class AiodnsResolver:
    """:class:`DnsResolver` backed by c-ares through :mod:`aiodns`."""

    def __init__(self, *, nameservers: list[str] | None = None, timeout: float = 5.0) -> None:
        self._nameservers = nameservers
        self._timeout = timeout
        self._resolver: Any = None

    def _get(self) -> Any:
        if self._resolver is None:
            import aiodns

            kwargs: dict[str, Any] = {"timeout": self._timeout, "tries": 2}
            if self._nameservers:
                kwargs["nameservers"] = self._nameservers
            self._resolver = aiodns.DNSResolver(**kwargs)
        return self._resolver

    @staticmethod
    def _is_not_found(exc: BaseException) -> bool:
        import pycares

        code = exc.args[0] if getattr(exc, "args", None) else None
        return code in (
            pycares.errno.ARES_ENOTFOUND,
            pycares.errno.ARES_ENODATA,
            pycares.errno.ARES_ENONAME,
        )

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        import aiodns.error
        import pycares

        try:
            result = await self._get().query_dns(name, "SRV")
        except aiodns.error.DNSError as exc:
            if self._is_not_found(exc):
                return []
            raise DnsLookupError(f"SRV lookup of {name} failed: {exc}") from exc
        out: list[SrvRecord] = []
        for rec in result.answer:
            if rec.type != pycares.QUERY_TYPE_SRV:
                continue
            d = rec.data
            out.append(SrvRecord(d.priority, d.weight, d.port, d.target.rstrip("."), rec.ttl))
        return out

    async def resolve_host(self, host: str) -> list[str]:
        import aiodns.error

        try:
            result = await self._get().getaddrinfo(
                host, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as exc:
            raise DnsLookupError(
                f"address lookup of {host} failed: {exc}", not_found=self._is_not_found(exc)
            ) from exc
        ips: list[str] = []
        for node in result.nodes:
            ip = node.addr[0]
            if isinstance(ip, bytes):
                ip = ip.decode()
            if ip not in ips:
                ips.append(ip)
        if not ips:
            raise DnsLookupError(f"no addresses for {host}", not_found=True)
        return ips

    async def resolve_cname(self, name: str) -> str | None:
        import aiodns.error
        import pycares

        try:
            result = await self._get().query_dns(name, "CNAME")
        except aiodns.error.DNSError as exc:
            if self._is_not_found(exc):
                return None
            raise DnsLookupError(f"CNAME lookup of {name} failed: {exc}") from exc
        for rec in result.answer:
            if rec.type == pycares.QUERY_TYPE_CNAME:
                return str(rec.data.cname).rstrip(".")
        return None

    async def close(self) -> None:
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            result = resolver.close()
            if asyncio.iscoroutine(result):  # aiodns >= 4 closes asynchronously
                await result


class StaticDnsResolver:
    """In-memory :class:`DnsResolver` for tests and fixed deployments.

    ``hosts`` maps a name to its addresses; ``srv`` maps an SRV query name
    (``_matrix-fed._tcp.example.org``) to records (``SrvRecord`` or
    ``(priority, weight, port, target)`` tuples); ``cnames`` maps an alias to
    its canonical name (addresses are still looked up in ``hosts`` under the
    alias). Unknown names are NXDOMAIN; IP literals resolve to themselves.
    Every query is appended to ``queries`` as ``(type, name)``.
    """

    def __init__(
        self,
        hosts: Mapping[str, Iterable[str]] | None = None,
        srv: Mapping[str, Iterable[SrvRecord | tuple[int, int, int, str]]] | None = None,
        cnames: Mapping[str, str] | None = None,
    ) -> None:
        self.hosts: dict[str, list[str]] = {k: list(v) for k, v in (hosts or {}).items()}
        self.srv: dict[str, list[SrvRecord]] = {
            k: [r if isinstance(r, SrvRecord) else SrvRecord(*r) for r in v]
            for k, v in (srv or {}).items()
        }
        self.cnames: dict[str, str] = dict(cnames or {})
        self.queries: list[tuple[str, str]] = []

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        self.queries.append(("SRV", name))
        return list(self.srv.get(name, []))

    async def resolve_host(self, host: str) -> list[str]:
        self.queries.append(("A", host))
        if is_ip_address(host):
            return [host.strip("[]")]
        ips = self.hosts.get(host)
        if not ips:
            raise DnsLookupError(f"no addresses for {host}", not_found=True)
        return list(ips)

    async def resolve_cname(self, name: str) -> str | None:
        self.queries.append(("CNAME", name))
        return self.cnames.get(name)


class _Randomness(Protocol):
    """What :func:`order_srv_records` draws from: a ``random.Random`` or the ``random`` module."""

    def randrange(self, stop: int, /) -> int: ...

    def uniform(self, a: float, b: float, /) -> float: ...


def order_srv_records(
    records: list[SrvRecord], rng: random.Random | None = None
) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority, weighted random within a priority."""
    pick_from: _Randomness = rng or random
    out: list[SrvRecord] = []
    for prio in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == prio]
        while group:
            total = sum(r.weight for r in group)
            if total == 0:
                pick = pick_from.randrange(len(group))
            else:
                point = pick_from.uniform(0, total)
                acc = 0.0
                pick = len(group) - 1
                for i, r in enumerate(group):
                    acc += r.weight
                    if point <= acc and r.weight > 0:
                        pick = i
                        break
            out.append(group.pop(pick))
    return out


# ---------------------------------------------------------------------------
# .well-known
# ---------------------------------------------------------------------------

WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_MAX_BODY = 50 * 1024
WELL_KNOWN_MIN_CACHE = 5 * 60.0
WELL_KNOWN_MAX_CACHE = 48 * 3600.0
WELL_KNOWN_DEFAULT_CACHE = 24 * 3600.0
WELL_KNOWN_DEFAULT_JITTER = 0.1
WELL_KNOWN_FAILURE_CACHE = 3600.0
#: First failure TTL for a domain that recently had a valid well-known;
#: doubles on each further failure up to WELL_KNOWN_FAILURE_CACHE.
WELL_KNOWN_SHORT_FAILURE_CACHE = 120.0
#: A domain counts as "recently had a valid well-known" within TTL + this.
WELL_KNOWN_GRACE = 2 * 3600.0
#: Start refetching when this share of the TTL remains.
WELL_KNOWN_REFRESH_SHARE = 0.2


class WellKnownFailure(enum.Enum):
    """Why a ``/.well-known/matrix/server`` fetch gave no delegation."""

    #: A final answer other than 200 (``WellKnownHop.status`` of the last hop).
    HTTP_STATUS = "http_status"
    REDIRECT_LOOP = "redirect_loop"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    NOT_HTTPS = "not_https"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    #: JSON, but not an object with a valid ``m.server`` server name.
    INVALID = "invalid"
    #: Every address of the host is in a blocked IP range.
    BLOCKED = "blocked"
    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    TLS = "tls"
    #: DNS failure or any other transport error.
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class WellKnownHop:
    """One request of a well-known fetch: its URL and what came back."""

    url: str
    status: int
    location: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class WellKnownResponse:
    """What a :class:`WellKnownFetcher` found.

    ``server`` is the validated ``m.server`` value, or ``None`` on any
    failure, then ``failure`` says why. ``cache_period`` is the lifetime taken
    from ``Cache-Control``/``Expires`` (``None`` if absent). ``temporary``
    marks failures that may go away by themselves (connection errors, 5xx),
    during which a previously valid result keeps being used. ``hops`` lists
    the requests made, redirects included.
    """

    server: str | None
    cache_period: float | None = None
    temporary: bool = False
    error: str | None = None
    failure: WellKnownFailure | None = None
    hops: tuple[WellKnownHop, ...] = ()


class WellKnownFetcher(Protocol):
    async def fetch(self, hostname: str) -> WellKnownResponse: ...


class WellKnownBodyError(ValueError):
    """A well-known body that holds no usable delegation; ``failure`` says why."""

    def __init__(self, failure: WellKnownFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


def parse_well_known_body(body: bytes) -> str:
    """Return the valid ``m.server`` of a well-known body or raise WellKnownBodyError.

    The body is parsed as JSON whatever its Content-Type.
    """
    if len(body) > WELL_KNOWN_MAX_BODY:
        raise WellKnownBodyError(WellKnownFailure.TOO_LARGE, "well-known body too large")
    try:
        doc = decode_json(body)
    except ValueError as exc:
        raise WellKnownBodyError(
            WellKnownFailure.NOT_JSON, f"well-known body is not JSON: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise WellKnownBodyError(WellKnownFailure.INVALID, "well-known body is not a JSON object")
    server = doc.get("m.server")
    if not isinstance(server, str) or not server:
        raise WellKnownBodyError(WellKnownFailure.INVALID, "well-known has no m.server string")
    if not is_valid_server_name(server):
        raise WellKnownBodyError(
            WellKnownFailure.INVALID, f"well-known m.server {server!r} is not a valid server name"
        )
    if not is_connectable_port(parse_server_name(server)[1]):
        # Valid grammar, but a delegation nowhere: as useless as an invalid one.
        raise WellKnownBodyError(
            WellKnownFailure.INVALID,
            f"well-known m.server {server!r} names a port nothing can listen on",
        )
    return server


def cache_period_from_headers(headers: Mapping[str, str], now: float) -> float | None:
    """Lifetime in seconds from Cache-Control (no-store → 0, max-age) or Expires."""
    cc = headers.get("Cache-Control")
    if cc:
        directives: dict[str, str | None] = {}
        for part in cc.split(","):
            name, _, value = part.strip().partition("=")
            directives[name.strip().lower()] = value.strip().strip('"') if value else None
        if "no-store" in directives:
            return 0.0
        max_age = directives.get("max-age")
        if max_age is not None:
            try:
                return float(max(0, int(max_age)))
            except ValueError:
                pass
    expires = headers.get("Expires")
    if expires:
        try:
            dt = email.utils.parsedate_to_datetime(expires)
        except (TypeError, ValueError):
            return 0.0  # invalid Expires means "already expired" (RFC 9111)
        if dt is None:
            return 0.0
        return max(0.0, dt.timestamp() - now)
    return None


@dataclass
class _WellKnownEntry:
    server: str | None
    fetched_at: float
    expires_at: float
    refresh_at: float
    #: What the fetch that made this entry got (for :class:`DiscoveryTrail`).
    response: WellKnownResponse
    #: Last valid result and when it stops counting as "recent".
    last_valid: str | None = None
    last_valid_until: float = 0.0
    failures: int = 0


# ---------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedServer:
    """Where and how to reach a server name.

    * ``host_header`` — value of the HTTP ``Host`` header (the spec's table).
    * ``tls_server_name`` — name the certificate is checked against and sent
      as SNI; ``None`` for IP literals (no SNI, certificate must hold the IP).
    * ``targets`` — ``(ip_or_host, port)`` pairs to try in order; host names
      (SRV targets, delegated names) still need A/AAAA resolution, which the
      transport does right before connecting (and applies the IP policy).
    * ``srv`` — targets came from an SRV lookup (so their ports may differ
      from each other and from any port in the server name).
    """

    server_name: str
    host_header: str
    tls_server_name: str | None
    targets: list[tuple[str, int]] = field(default_factory=list)
    srv: bool = False

    @property
    def cert_host(self) -> str:
        """The name/IP the certificate must be valid for."""
        if self.tls_server_name is not None:
            return self.tls_server_name
        return self.targets[0][0]


class DiscoveryRule(enum.Enum):
    """The row of the spec's server discovery table that chose the targets.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names
    """

    IP_LITERAL = "ip_literal"  # 1
    EXPLICIT_PORT = "explicit_port"  # 2
    DELEGATED_IP_LITERAL = "delegated_ip_literal"  # 3.1
    DELEGATED_EXPLICIT_PORT = "delegated_explicit_port"  # 3.2
    DELEGATED_SRV = "delegated_srv"  # 3.3, or 3.4 through the deprecated _matrix._tcp
    DELEGATED_DEFAULT_PORT = "delegated_default_port"  # 3.5
    SRV = "srv"  # 4, or 5 through the deprecated _matrix._tcp
    DEFAULT_PORT = "default_port"  # 6


DEPRECATED_SRV_PREFIX = "_matrix._tcp."


@dataclass(frozen=True)
class SrvLookup:
    """One SRV query made while resolving, and its answer (empty: no records)."""

    name: str
    records: tuple[SrvRecord, ...] = ()
    from_cache: bool = False
    error: str | None = None
    seconds: float = 0.0

    @property
    def deprecated(self) -> bool:
        """The query was for the deprecated ``_matrix._tcp`` service name."""
        return self.name.startswith(DEPRECATED_SRV_PREFIX)


@dataclass
class DiscoveryTrail:
    """What one :meth:`ServerResolver.resolve` call looked at and chose.

    ``well_known`` is what the well-known fetch got (``None`` when the rules
    did not ask for one: IP literal, explicit port, or no fetcher);
    ``delegated`` the ``m.server`` the resolution went on with (it can differ
    from ``well_known.server`` when a temporary failure kept a cached
    delegation). ``srv_lookups`` lists the SRV queries in order; ``rule`` is
    set once the targets are chosen. Durations are in seconds.
    """

    well_known: WellKnownResponse | None = None
    well_known_from_cache: bool = False
    well_known_seconds: float = 0.0
    delegated: str | None = None
    srv_lookups: list[SrvLookup] = field(default_factory=list)
    rule: DiscoveryRule | None = None


class ServerResolver:
    """Resolves server names per
    https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names,
    with well-known and SRV caching.

    ``well_known`` may be ``None`` to skip the well-known step entirely.
    One instance can be shared between clients so they share the caches.
    """

    def __init__(
        self,
        dns: DnsResolver,
        well_known: WellKnownFetcher | None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_cache_entries: int = 10_000,
        srv_default_ttl: float = 300.0,
        srv_negative_ttl: float = 60.0,
    ) -> None:
        self.dns = dns
        self.well_known = well_known
        self._clock = clock
        self._rng = rng or random.Random()
        self._srv_default_ttl = srv_default_ttl
        self._srv_negative_ttl = srv_negative_ttl
        self._wk_cache: BoundedDict[str, _WellKnownEntry] = BoundedDict(
            "federation_well_known", max_cache_entries
        )
        self._wk_inflight: dict[str, asyncio.Future[str | None]] = {}
        # host -> (expires at, records, the SRV name that answered)
        self._srv_cache: BoundedDict[str, tuple[float, list[SrvRecord], str]] = BoundedDict(
            "federation_srv", max_cache_entries
        )

    # -- public -------------------------------------------------------------

    async def resolve(
        self, server_name: str, *, trail: DiscoveryTrail | None = None
    ) -> ResolvedServer:
        """Where to reach ``server_name``; ``trail`` (if given) records how it was chosen."""
        if not is_valid_server_name(server_name):
            raise FederationDeniedError(
                f"invalid server name {server_name!r}", destination=server_name
            )
        record = trail if trail is not None else DiscoveryTrail()
        host, port = parse_server_name(server_name)
        if not is_connectable_port(port):
            raise FederationDeniedError(
                f"{server_name!r} names a port nothing can listen on", destination=server_name
            )
        bare = host.strip("[]")
        # 1. IP literal
        if is_ip_address(host):
            record.rule = DiscoveryRule.IP_LITERAL
            return ResolvedServer(
                server_name, server_name, None, [(bare, port or DEFAULT_FEDERATION_PORT)]
            )
        # 2. explicit port
        if port is not None:
            record.rule = DiscoveryRule.EXPLICIT_PORT
            return ResolvedServer(server_name, server_name, host, [(host, port)])
        # 3. .well-known
        if self.well_known is not None:
            delegated = await self.get_well_known(host, trail=trail)
            record.delegated = delegated
            if delegated is not None:
                dh, dp = parse_server_name(delegated)
                dbare = dh.strip("[]")
                if is_ip_address(dh):  # 3.1
                    record.rule = DiscoveryRule.DELEGATED_IP_LITERAL
                    return ResolvedServer(
                        server_name, delegated, None, [(dbare, dp or DEFAULT_FEDERATION_PORT)]
                    )
                if dp is not None:  # 3.2
                    record.rule = DiscoveryRule.DELEGATED_EXPLICIT_PORT
                    return ResolvedServer(server_name, delegated, dh, [(dh, dp)])
                srv = await self._srv_targets(dh, server_name, record)  # 3.3, 3.4
                if srv:
                    record.rule = DiscoveryRule.DELEGATED_SRV
                    return ResolvedServer(server_name, dh, dh, srv, srv=True)
                record.rule = DiscoveryRule.DELEGATED_DEFAULT_PORT
                return ResolvedServer(  # 3.5
                    server_name, dh, dh, [(dh, DEFAULT_FEDERATION_PORT)]
                )
        # 4., 5. SRV on the server name itself
        srv = await self._srv_targets(host, server_name, record)
        if srv:
            record.rule = DiscoveryRule.SRV
            return ResolvedServer(server_name, host, host, srv, srv=True)
        # 6. A/AAAA, 8448
        record.rule = DiscoveryRule.DEFAULT_PORT
        return ResolvedServer(server_name, host, host, [(host, DEFAULT_FEDERATION_PORT)])

    async def get_well_known(
        self, hostname: str, *, trail: DiscoveryTrail | None = None
    ) -> str | None:
        """The (cached) ``m.server`` delegation of ``hostname``, or ``None``."""
        now = self._clock()
        entry = self._wk_cache.get(hostname)
        if entry is not None and now < entry.refresh_at:
            self._note_cached_well_known(hostname, trail)
            return entry.server
        inflight = self._wk_inflight.get(hostname)
        if inflight is not None:
            result = await asyncio.shield(inflight)
            self._note_cached_well_known(hostname, trail)
            return result
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._wk_inflight[hostname] = fut
        try:
            result = await self._fetch_well_known(hostname, entry, trail)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            self._wk_inflight.pop(hostname, None)

    def invalidate(self, hostname: str) -> None:
        self._wk_cache.pop(hostname, None)
        self._srv_cache.pop(hostname, None)

    # -- internals ----------------------------------------------------------

    def _note_cached_well_known(self, hostname: str, trail: DiscoveryTrail | None) -> None:
        entry = self._wk_cache.get(hostname)
        if trail is not None and entry is not None:
            trail.well_known = entry.response
            trail.well_known_from_cache = True

    def _store(self, cache: BoundedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value

    async def _fetch_well_known(
        self, hostname: str, prev: _WellKnownEntry | None, trail: DiscoveryTrail | None = None
    ) -> str | None:
        assert self.well_known is not None
        started = time.perf_counter()
        try:
            resp = await self.well_known.fetch(hostname)
        except FederationDeniedError as exc:
            resp = WellKnownResponse(None, error=str(exc), failure=WellKnownFailure.BLOCKED)
        except Exception as exc:  # any fetch failure is a well-known failure
            resp = WellKnownResponse(
                None,
                temporary=True,
                error=f"{type(exc).__name__}: {exc}",
                failure=WellKnownFailure.UNREACHABLE,
            )
        if trail is not None:
            trail.well_known = resp
            trail.well_known_seconds = time.perf_counter() - started
        now = self._clock()
        last_valid = prev.last_valid if prev else None
        last_valid_until = prev.last_valid_until if prev else 0.0
        if resp.server is not None:
            if resp.cache_period is None:
                ttl = WELL_KNOWN_DEFAULT_CACHE * self._rng.uniform(
                    1 - WELL_KNOWN_DEFAULT_JITTER, 1 + WELL_KNOWN_DEFAULT_JITTER
                )
            else:
                ttl = min(max(resp.cache_period, WELL_KNOWN_MIN_CACHE), WELL_KNOWN_MAX_CACHE)
            entry = _WellKnownEntry(
                server=resp.server,
                fetched_at=now,
                expires_at=now + ttl,
                refresh_at=now + ttl * (1 - WELL_KNOWN_REFRESH_SHARE),
                response=resp,
                last_valid=resp.server,
                last_valid_until=now + ttl + WELL_KNOWN_GRACE,
            )
            self._store(self._wk_cache, hostname, entry)
            return resp.server

        failures = (prev.failures if prev and prev.server is None else 0) + 1
        recently_valid = last_valid is not None and now < last_valid_until
        if recently_valid:
            ttl = min(
                WELL_KNOWN_SHORT_FAILURE_CACHE * 2 ** (failures - 1), WELL_KNOWN_FAILURE_CACHE
            )
        else:
            ttl = WELL_KNOWN_FAILURE_CACHE
        logger.debug("well-known fetch for %s failed: %s (cached %ss)", hostname, resp.error, ttl)
        # A temporary failure keeps serving the previous, still-unexpired result.
        if (
            resp.temporary
            and prev is not None
            and prev.server is not None
            and now < prev.expires_at
        ):
            prev.refresh_at = min(now + ttl, prev.expires_at)
            return prev.server
        entry = _WellKnownEntry(
            server=None,
            fetched_at=now,
            expires_at=now + ttl,
            refresh_at=now + ttl,
            response=resp,
            last_valid=last_valid,
            last_valid_until=last_valid_until,
            failures=failures,
        )
        self._store(self._wk_cache, hostname, entry)
        return None

    async def _srv_targets(
        self, host: str, destination: str, trail: DiscoveryTrail
    ) -> list[tuple[str, int]]:
        now = self._clock()
        cached = self._srv_cache.get(host)
        if cached is not None and now < cached[0]:
            records = cached[1]
            trail.srv_lookups.append(SrvLookup(cached[2], tuple(records), from_cache=True))
        else:
            try:
                records, answered_by = await self._lookup_srv(host, trail)
            except DnsLookupError as exc:
                if cached is None:
                    raise DestinationUnreachableError(str(exc), destination=destination) from exc
                # A stale answer beats none on a temporary failure.
                records = cached[1]
                trail.srv_lookups.append(SrvLookup(cached[2], tuple(records), from_cache=True))
            else:
                ttls = [r.ttl for r in records if r.ttl is not None]
                if not records:
                    ttl = self._srv_negative_ttl
                elif ttls:
                    ttl = min(max(min(ttls), 30.0), 3600.0)
                else:
                    ttl = self._srv_default_ttl
                self._store(self._srv_cache, host, (now + ttl, records, answered_by))
        if not records:
            return []
        if len(records) == 1 and records[0].target in ("", "."):
            raise DestinationUnreachableError(
                f"SRV for {host} says the service is not available", destination=destination
            )
        return [
            (r.target, r.port)
            for r in order_srv_records(records, self._rng)
            if r.target not in ("", ".")
        ]

    async def _lookup_srv(self, host: str, trail: DiscoveryTrail) -> tuple[list[SrvRecord], str]:
        """The records of ``_matrix-fed._tcp``, else the deprecated ``_matrix._tcp``."""
        records: list[SrvRecord] = []
        for name in (f"_matrix-fed._tcp.{host}", f"{DEPRECATED_SRV_PREFIX}{host}"):
            started = time.perf_counter()
            try:
                records = await self.dns.resolve_srv(name)
            except DnsLookupError as exc:
                seconds = time.perf_counter() - started
                trail.srv_lookups.append(SrvLookup(name, error=str(exc), seconds=seconds))
                raise
            seconds = time.perf_counter() - started
            trail.srv_lookups.append(SrvLookup(name, tuple(records), seconds=seconds))
            if records:
                break
        return records, name


__all__ = [
    "DEFAULT_BLOCKED_IP_RANGES",
    "DEFAULT_FEDERATION_PORT",
    "AiodnsResolver",
    "DiscoveryRule",
    "DiscoveryTrail",
    "DnsLookupError",
    "DnsResolver",
    "IpDecision",
    "IpFilter",
    "ResolvedServer",
    "ServerResolver",
    "SrvLookup",
    "SrvRecord",
    "StaticDnsResolver",
    "WellKnownBodyError",
    "WellKnownFailure",
    "WellKnownFetcher",
    "WellKnownHop",
    "WellKnownResponse",
    "cache_period_from_headers",
    "is_ip_address",
    "order_srv_records",
    "parse_well_known_body",
]
