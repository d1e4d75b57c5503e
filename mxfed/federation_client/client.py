"""The outbound federation HTTP client every mxfed service uses.

One :class:`FederationClient` holds one aiohttp session whose connector keeps a
keep-alive pool per destination. The URL host of each request is the name the
certificate must be valid for (so aiohttp sends it as SNI and checks it, or
sends no SNI for an IP), while a custom connector resolver maps that host to
the discovered targets (SRV / delegated / A/AAAA) and applies the IP range
policy to every address right before a connection is opened.

Requests are signed with X-Matrix over the exact request-target bytes that go
on the request line: the caller percent-encodes the path (see
:func:`federation_path`), the query string is encoded once here, and the URL
is handed to aiohttp pre-encoded so nothing re-encodes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import errno
import functools
import inspect
import logging
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import nacl.signing

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.server_names import is_valid_server_name
from matrix_protocol.xmatrix import sign_request
from mxfed.bounded import BoundedDict
from mxfed.lazy_import import lazy_module
from mxfed.server_policy import SERVER_POLICY, ServerPolicy

from .errors import (
    DestinationBlockedError,
    DestinationUnreachableError,
    FederationDeniedError,
    FederationError,
    HttpResponseError,
    InvalidResponseError,
    NotRetryingDestination,
    RequestTimeoutError,
    TlsVerificationError,
)
from .resolver import (
    DEFAULT_BLOCKED_IP_RANGES,
    WELL_KNOWN_MAX_BODY,
    WELL_KNOWN_PATH,
    AiodnsResolver,
    DnsLookupError,
    DnsResolver,
    IpFilter,
    ResolvedServer,
    ServerResolver,
    WellKnownBodyError,
    WellKnownFailure,
    WellKnownFetcher,
    WellKnownHop,
    WellKnownResponse,
    cache_period_from_headers,
    is_ip_address,
    parse_well_known_body,
)

if TYPE_CHECKING:
    import aiohttp
    import yarl
    from aiohttp.abc import AbstractResolver, ResolveResult
    from multidict import CIMultiDictProxy
else:
    # Loaded by the first outbound request: a part that sends nothing at idle
    # does not carry the HTTP client (several MiB per process).
    aiohttp = lazy_module("aiohttp")
    yarl = lazy_module("yarl")

logger = logging.getLogger(__name__)

__version__ = "0.1.0"

QueryArg = list[tuple[str, Any]] | tuple[tuple[str, Any], ...] | Mapping[str, Any] | None
BackoffCheck = Callable[[str], "float | None | Awaitable[float | None]"]
# Returns the current (signing key, key id); called for every signed request.
KeyProvider = Callable[[], "tuple[nacl.signing.SigningKey, str]"]


@dataclass
class OutboundOptions:
    """Settings of the outbound federation client (shared by every service)."""

    verify_tls: bool = True
    #: Extra CA bundle trusted in addition to the system store.
    ca_file: str | None = None
    #: (certificate file, private key file) presented as TLS client certificate.
    client_cert: tuple[str, str] | None = None
    blocked_ip_ranges: list[str] = field(default_factory=lambda: list(DEFAULT_BLOCKED_IP_RANGES))
    #: Always allowed, even if inside a blocked range (allow-list wins).
    allowed_ip_ranges: list[str] = field(default_factory=list)
    #: Overall deadline of one request, retries included (seconds).
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    max_connections_per_host: int = 8
    #: Total pool size over all destinations (0 = unlimited).
    max_connections: int = 0
    keepalive_timeout: float = 60.0
    user_agent: str = f"mxfed/{__version__}"
    max_response_size: int = 100 * 1024 * 1024
    #: Port used for ``/.well-known/matrix/server`` (443; injectable for tests).
    well_known_port: int = 443
    well_known_timeout: float = 30.0
    well_known_max_redirects: int = 5
    #: "Short" retry schedule: ``min(initial * 2**k, max) * U(0.8, 1.4)``.
    max_retries: int = 3
    retry_initial_delay: float = 0.5
    retry_max_delay: float = 2.0
    #: "Long" schedule (``long_retries=True``, e.g. /send): ``min(4**(k+1), max) * U``.
    long_max_retries: int = 10
    long_retry_max_delay: float = 60.0


@dataclass
class FederationResponse:
    status: int
    headers: CIMultiDictProxy[str]
    #: Parsed JSON body (``None`` when empty, or unparsable on a non-2xx).
    body: Any
    raw: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class StreamedResponse:
    """A response whose body the caller reads from ``content`` as it arrives.

    See :meth:`FederationClient.stream`: the caller bounds what it reads and
    how long it waits for each piece.
    """

    status: int
    headers: CIMultiDictProxy[str]
    content: aiohttp.StreamReader
    destination: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    async def error(self, limit: int = 64 * 1024) -> HttpResponseError:
        """This (non-2xx) answer as an error, with the Matrix ``errcode`` when the body has one."""
        body: Any = None
        try:
            raw = await self.content.read(limit)
            body = decode_json(raw) if raw else None
        except (ValueError, aiohttp.ClientError, OSError):
            body = None
        errcode = error = None
        if isinstance(body, dict):
            if isinstance(body.get("errcode"), str):
                errcode = body["errcode"]
            if isinstance(body.get("error"), str):
                error = body["error"]
        return HttpResponseError(
            self.status,
            errcode,
            error,
            body,
            _retry_after_ms(self.headers, body),
            destination=self.destination,
        )


# ---------------------------------------------------------------------------
# URL helpers
# ---------------------------------------------------------------------------


def federation_path(*segments: Any) -> str:
    """Build a request path, percent-encoding every segment with ``safe=""``.

    ``federation_path("_matrix", "federation", "v1", "event", "$a/b+c")``
    → ``"/_matrix/federation/v1/event/%24a%2Fb%2Bc"``. Non-string segments
    are converted with ``str``.
    """
    return "/" + "/".join(quote(str(s), safe="") for s in segments)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode_query(query: QueryArg) -> str:
    """Encode query parameters once (``quote(..., safe="")`` for keys and values).

    Accepts a list of pairs (order kept) or a mapping; a mapping value that is
    a list/tuple becomes a repeated parameter (``ver=1&ver=2``).
    """
    if not query:
        return ""
    pairs: Iterable[tuple[str, Any]]
    if isinstance(query, Mapping):
        flat: list[tuple[str, Any]] = []
        for k, v in query.items():
            if isinstance(v, list | tuple):
                flat.extend((k, item) for item in v)
            else:
                flat.append((k, v))
        pairs = flat
    else:
        pairs = query
    return "&".join(f"{quote(str(k), safe='')}={quote(_query_value(v), safe='')}" for k, v in pairs)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ---------------------------------------------------------------------------
# Transport pieces
# ---------------------------------------------------------------------------


class _TargetResolver:
    """URL host → discovered targets → IPs, with the IP policy (aiohttp's resolver,
    through :func:`_aiohttp_resolver_class`).

    ``routes[(url_host, url_port)]`` holds SRV targets (registered with URL
    port 0, which no server name can use, so SRV routes never collide with an
    explicit port). Any other host is looked up in DNS with the URL's port.
    aiohttp never calls this for IP-literal URL hosts; those are checked by the
    client before the request.
    """

    def __init__(self, dns: DnsResolver, ip_filter: IpFilter) -> None:
        self.dns = dns
        self.ip_filter = ip_filter
        self.routes: BoundedDict[tuple[str, int], list[tuple[str, int]]] = BoundedDict(
            "federation_srv_routes", 10_000
        )

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        targets = self.routes.get((host, port)) or [(host, port)]
        results: list[ResolveResult] = []
        blocked: list[str] = []
        last_error: DnsLookupError | None = None
        for target, target_port in targets:
            if is_ip_address(target):
                ips = [target.strip("[]")]
            else:
                try:
                    ips = await self.dns.resolve_host(target)
                except DnsLookupError as exc:
                    last_error = exc
                    continue
            for ip in ips:
                if not self.ip_filter.is_allowed(ip):
                    blocked.append(ip)
                    continue
                results.append(
                    {
                        "hostname": host,
                        "host": ip,
                        "port": target_port,
                        "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                        "proto": 0,
                        "flags": socket.AI_NUMERICHOST,
                    }
                )
        if results:
            return results
        if blocked:
            raise FederationDeniedError(
                f"all addresses of {host} are in blocked IP ranges: {', '.join(blocked)}"
            )
        if last_error is not None:
            raise last_error
        raise DnsLookupError(f"no addresses for {host}", not_found=True)


@functools.cache
def _aiohttp_resolver_class() -> Callable[[_TargetResolver], AbstractResolver]:
    """The aiohttp resolver class, made when the first session is (aiohttp loads lazily)."""
    from aiohttp.abc import AbstractResolver

    class AiohttpResolver(AbstractResolver):
        def __init__(self, targets: _TargetResolver) -> None:
            self.targets = targets

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return await self.targets.resolve(host, port, family)

        async def close(self) -> None:
            return None

    return AiohttpResolver


def build_ssl_context(options: OutboundOptions) -> ssl.SSLContext:
    """TLS context: system store (+ certifi if installed, + ``ca_file``)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if options.verify_tls:
        try:
            import certifi
        except ImportError:  # pragma: no cover - certifi is optional
            pass
        else:
            ctx.load_verify_locations(cafile=certifi.where())
        if options.ca_file:
            ctx.load_verify_locations(cafile=options.ca_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if options.client_cert is not None:
        cert, key = options.client_cert
        ctx.load_cert_chain(cert, key)
    return ctx


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise ValueError(f"response body of {resp.content_length} bytes exceeds {limit}")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            raise ValueError(f"response body exceeds {limit} bytes")
    return bytes(buf)


def _retry_after_ms(headers: Mapping[str, str], body: Any) -> int | None:
    if isinstance(body, dict):
        value = body.get("retry_after_ms")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    header = headers.get("Retry-After")
    if header:
        header = header.strip()
        if header.isdigit():
            return int(header) * 1000
        try:
            dt = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        if dt is not None:
            return max(0, int((dt.timestamp() - time.time()) * 1000))
    return None


def _is_cert_error(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _is_cert_error(cause)


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class TransportFailure(enum.Enum):
    """What kind of transport error stopped a request (for reports, not control flow)."""

    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    TLS_CERTIFICATE = "tls_certificate"
    TLS = "tls"
    DNS = "dns"
    OTHER = "other"


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify_transport_error(exc: BaseException) -> TransportFailure:
    """The kind of ``exc`` or of the first error in its cause chain that has one."""
    for current in _cause_chain(exc):
        if _is_cert_error(current):
            return TransportFailure.TLS_CERTIFICATE
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return TransportFailure.CONNECTION_REFUSED
        if isinstance(current, TimeoutError | RequestTimeoutError | aiohttp.ServerTimeoutError):
            return TransportFailure.TIMEOUT
        if isinstance(current, ssl.SSLError | aiohttp.ClientSSLError):
            return TransportFailure.TLS
        if isinstance(current, DnsLookupError):
            return TransportFailure.DNS
    return TransportFailure.OTHER


def describe_transport_error(exc: BaseException) -> str:
    """One line about a transport error, naming a certificate problem plainly."""
    for current in _cause_chain(exc):
        # aiohttp wraps the ssl module's error without chaining it.
        inner = getattr(current, "certificate_error", current)
        message = getattr(inner, "verify_message", None)
        if isinstance(inner, ssl.SSLCertVerificationError) and message:
            return f"certificate verify failed: {message}"
    return f"{type(exc).__name__}: {exc}"


_WELL_KNOWN_TRANSPORT_FAILURES = {
    TransportFailure.CONNECTION_REFUSED: WellKnownFailure.CONNECTION_REFUSED,
    TransportFailure.TIMEOUT: WellKnownFailure.TIMEOUT,
    TransportFailure.TLS_CERTIFICATE: WellKnownFailure.TLS,
    TransportFailure.TLS: WellKnownFailure.TLS,
    TransportFailure.DNS: WellKnownFailure.UNREACHABLE,
    TransportFailure.OTHER: WellKnownFailure.UNREACHABLE,
}

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpWellKnownFetcher:
    """Fetches ``https://<host>/.well-known/matrix/server`` over the client's pool.

    Follows redirects itself (https only, loop detection, bounded), reads at
    most 50 KiB, parses the body as JSON whatever its content type, and
    applies the IP policy (through the client's connector, and directly for
    IP-literal redirect targets). The response lists every request made and
    says why a fetch failed.
    """

    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def fetch(self, hostname: str) -> WellKnownResponse:
        client = self._client
        opts = client.options
        url = yarl.URL.build(
            scheme="https",
            host=_bracket(hostname),
            port=opts.well_known_port,
            path=WELL_KNOWN_PATH,
            encoded=True,
        )
        seen: set[str] = set()
        hops: list[WellKnownHop] = []

        def failed(
            failure: WellKnownFailure, error: str, temporary: bool = False
        ) -> WellKnownResponse:
            return WellKnownResponse(
                None, temporary=temporary, error=error, failure=failure, hops=tuple(hops)
            )

        try:
            async with asyncio.timeout(opts.well_known_timeout):
                session = client._get_session()
                for _ in range(opts.well_known_max_redirects + 1):
                    if url.scheme != "https" or url.raw_host is None:
                        return failed(WellKnownFailure.NOT_HTTPS, f"refusing non-https URL {url}")
                    if str(url) in seen:
                        return failed(WellKnownFailure.REDIRECT_LOOP, f"redirect loop at {url}")
                    seen.add(str(url))
                    if is_ip_address(url.raw_host):
                        client.ip_filter.check(url.raw_host, destination=hostname)
                    async with session.get(
                        url,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(
                            total=None, sock_connect=opts.connect_timeout
                        ),
                    ) as resp:
                        location = resp.headers.get("Location")
                        hops.append(
                            WellKnownHop(
                                str(url), resp.status, location, resp.headers.get("Content-Type")
                            )
                        )
                        if resp.status in _REDIRECTS and location:
                            url = url.join(yarl.URL(location))
                            continue
                        if resp.status != 200:
                            return failed(
                                WellKnownFailure.HTTP_STATUS,
                                f"well-known returned HTTP {resp.status}",
                                temporary=resp.status >= 500,
                            )
                        try:
                            body = await _read_limited(resp, WELL_KNOWN_MAX_BODY)
                        except ValueError as exc:
                            return failed(WellKnownFailure.TOO_LARGE, str(exc))
                        try:
                            server = parse_well_known_body(body)
                        except WellKnownBodyError as exc:
                            return failed(exc.failure, str(exc))
                        period = cache_period_from_headers(resp.headers, time.time())
                        return WellKnownResponse(server, cache_period=period, hops=tuple(hops))
                return failed(
                    WellKnownFailure.TOO_MANY_REDIRECTS,
                    f"more than {opts.well_known_max_redirects} redirects",
                )
        except FederationDeniedError as exc:
            return failed(WellKnownFailure.BLOCKED, str(exc))
        except (aiohttp.ClientError, OSError, TimeoutError, DestinationUnreachableError) as exc:
            return failed(
                _WELL_KNOWN_TRANSPORT_FAILURES[classify_transport_error(exc)],
                describe_transport_error(exc),
                temporary=True,
            )


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class FederationClient:
    """Outbound federation requests, signed with X-Matrix.

    Use as ``async with FederationClient(...) as client:`` or call
    :meth:`close`. Stateless apart from its connection pool and the
    resolver's discovery caches; backoff state belongs to the caller, who can
    pass ``backoff_check(destination) -> seconds_to_wait | None`` (sync or
    async) to fail fast with :class:`NotRetryingDestination`.

    Injection points for tests/deployments: ``dns`` (A/AAAA and SRV),
    ``well_known`` (fetcher) or a whole ``server_resolver`` (to share caches
    between clients).
    """

    def __init__(
        self,
        server_name: str,
        signing_key: nacl.signing.SigningKey,
        key_id: str,
        options: OutboundOptions | None = None,
        *,
        dns: DnsResolver | None = None,
        well_known: WellKnownFetcher | None = None,
        server_resolver: ServerResolver | None = None,
        backoff_check: BackoffCheck | None = None,
        rng: random.Random | None = None,
        key_provider: KeyProvider | None = None,
        server_policy: ServerPolicy = SERVER_POLICY,
    ) -> None:
        self.server_name = server_name
        # The operator's block/allow lists (mxfed servers block): checked before every request.
        self.server_policy = server_policy
        self._signing_key = signing_key
        self._key_id = key_id
        # A rotated key (mxfed keys rotate) must be picked up without a restart.
        self._key_provider = key_provider
        self.options = options or OutboundOptions()
        self.ip_filter = IpFilter(self.options.blocked_ip_ranges, self.options.allowed_ip_ranges)
        self._owned_dns: AiodnsResolver | None = None
        if server_resolver is not None:
            self.resolver = server_resolver
            dns = dns or server_resolver.dns
        else:
            if dns is None:
                dns = self._owned_dns = AiodnsResolver()
            self.resolver = ServerResolver(dns, well_known or HttpWellKnownFetcher(self))
        self.dns = dns
        self._backoff_check = backoff_check
        self._rng = rng or random.Random()
        self._ssl = build_ssl_context(self.options)
        self._target_resolver = _TargetResolver(dns, self.ip_filter)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise FederationError("FederationClient is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl,
                resolver=_aiohttp_resolver_class()(self._target_resolver),
                use_dns_cache=False,
                limit=self.options.max_connections,
                limit_per_host=self.options.max_connections_per_host,
                keepalive_timeout=self.options.keepalive_timeout,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self.options.user_agent},
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._owned_dns is not None:
            await self._owned_dns.close()
            self._owned_dns = None

    async def __aenter__(self) -> FederationClient:
        self._get_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ------------------------------------------------------------

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: QueryArg = None,
        json_body: Any = None,
        sign: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 - overall deadline incl. retries
        idempotent: bool | None = None,
        long_retries: bool = False,
        ignore_backoff: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> FederationResponse:
        """Send one federation request; returns the response whatever its status.

        ``path`` must already be percent-encoded (:func:`federation_path`);
        ``query`` is encoded here, once. Retries (connection errors, 5xx,
        429) happen only for idempotent requests: GET/HEAD by default, or
        when ``idempotent=True``; all attempts share the ``timeout``
        (default ``options.request_timeout``).
        """
        method = method.upper()
        query_string, send_headers, body = await self._prepare(
            method, destination, path, query, json_body, sign, ignore_backoff, headers
        )

        loop = asyncio.get_running_loop()
        total = self.options.request_timeout if timeout is None else timeout
        deadline = loop.time() + total
        retryable = idempotent if idempotent is not None else method in ("GET", "HEAD")
        max_retries = self.options.long_max_retries if long_retries else self.options.max_retries
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    resp = await self._attempt(
                        method, destination, path, query_string, body, send_headers
                    )
            except TimeoutError as exc:
                raise RequestTimeoutError(
                    f"{method} {destination}{path} timed out after {total}s",
                    destination=destination,
                ) from exc
            except (FederationDeniedError, TlsVerificationError, InvalidResponseError):
                raise
            except DestinationUnreachableError as exc:
                delay = self._retry_delay(attempt, long_retries)
                if not retryable or attempt >= max_retries or loop.time() + delay >= deadline:
                    raise
                logger.debug("retrying %s %s after %s: %s", method, destination, delay, exc)
            else:
                if not (retryable and (resp.status >= 500 or resp.status == 429)):
                    return resp
                delay = self._retry_delay(attempt, long_retries)
                retry_after = _retry_after_ms(resp.headers, resp.body)
                if retry_after is not None:
                    delay = max(delay, retry_after / 1000)
                if attempt >= max_retries or loop.time() + delay >= deadline:
                    return resp
                logger.debug("retrying %s %s after HTTP %s", method, destination, resp.status)
            await asyncio.sleep(delay)
            attempt += 1

    async def _prepare(
        self,
        method: str,
        destination: str,
        path: str,
        query: QueryArg,
        json_body: Any,
        sign: bool,
        ignore_backoff: bool,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, dict[str, str], bytes | None]:
        """Checks, backoff, and the encoded query, headers (X-Matrix) and body of a request."""
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(f"path must be an encoded absolute path without query: {path!r}")
        if not is_valid_server_name(destination):
            raise FederationDeniedError(
                f"invalid server name {destination!r}", destination=destination
            )
        if self.server_policy.blocks(destination):
            raise DestinationBlockedError(
                f"federation with {destination} is blocked by this server's policy",
                destination=destination,
            )
        if self._backoff_check is not None and not ignore_backoff:
            retry_in = self._backoff_check(destination)
            if inspect.isawaitable(retry_in):
                retry_in = await retry_in
            if retry_in is not None and retry_in > 0:
                raise NotRetryingDestination(destination, float(retry_in))

        query_string = encode_query(query)
        target = path + ("?" + query_string if query_string else "")
        send_headers: dict[str, str] = dict(headers or {})
        body: bytes | None = None
        if json_body is not None:
            body = encode_json(json_body)
            send_headers["Content-Type"] = "application/json"
        if sign:
            signing_key, key_id = (
                self._key_provider() if self._key_provider else (self._signing_key, self._key_id)
            )
            send_headers["Authorization"] = sign_request(
                method,
                target,
                self.server_name,
                destination,
                json_body,
                signing_key,
                key_id,
            )
        return query_string, send_headers, body

    @contextlib.asynccontextmanager
    async def stream(
        self,
        destination: str,
        path: str,
        *,
        query: QueryArg = None,
        sign: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline for the response head
        ignore_backoff: bool = False,
    ) -> AsyncIterator[StreamedResponse]:
        """GET, handing the response body over as a stream (for media: never read whole).

        ``timeout`` (default ``options.request_timeout``) bounds getting the
        status and headers, connection retries included; reading the body is
        the caller's, with its own size and time limits. The response is
        yielded whatever its status (:meth:`StreamedResponse.error` for a
        non-2xx one) and released when the block ends.
        """
        query_string, send_headers, _ = await self._prepare(
            "GET", destination, path, query, None, sign, ignore_backoff, None
        )
        loop = asyncio.get_running_loop()
        total = self.options.request_timeout if timeout is None else timeout
        deadline = loop.time() + total
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._open(
                        "GET", destination, path, query_string, None, send_headers
                    )
                break
            except TimeoutError as exc:
                raise RequestTimeoutError(
                    f"GET {destination}{path} got no answer in {total}s", destination=destination
                ) from exc
            except (FederationDeniedError, TlsVerificationError):
                raise
            except DestinationUnreachableError:
                delay = self._retry_delay(attempt, False)
                if attempt >= self.options.max_retries or loop.time() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            attempt += 1
        try:
            yield StreamedResponse(response.status, response.headers, response.content, destination)
        finally:
            response.release()

    @contextlib.asynccontextmanager
    async def stream_url(
        self,
        url: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline for the response head
        max_redirects: int = 5,
    ) -> AsyncIterator[StreamedResponse]:
        """GET an absolute ``https://`` URL unsigned (a media ``Location`` part), body streamed.

        The IP policy applies to every address connected to, redirects
        included (https only, at most ``max_redirects``).
        """
        total = self.options.request_timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + total
        target = yarl.URL(url)
        session = self._get_session()
        for _ in range(max_redirects + 1):
            host = target.raw_host
            if target.scheme != "https" or not host:
                raise FederationDeniedError(f"refusing to fetch {url!r}: only https URLs")
            if is_ip_address(host):
                self.ip_filter.check(host.strip("[]"), destination=host)
            try:
                async with asyncio.timeout_at(deadline):
                    response = await session.get(
                        target,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(
                            total=None,
                            connect=self.options.connect_timeout,
                            sock_connect=self.options.connect_timeout,
                        ),
                    )
            except TimeoutError as exc:
                raise RequestTimeoutError(f"GET {url} got no answer in {total}s") from exc
            except FederationError:
                raise
            except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
                if _is_cert_error(exc):
                    raise TlsVerificationError(f"TLS verification of {host} failed: {exc}") from exc
                raise DestinationUnreachableError(
                    f"GET {url}: {type(exc).__name__}: {exc}"
                ) from exc
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                response.release()
                target = target.join(yarl.URL(location))
                continue
            try:
                yield StreamedResponse(response.status, response.headers, response.content, host)
            finally:
                response.release()
            return
        raise InvalidResponseError(f"more than {max_redirects} redirects from {url}", status=0)

    def _retry_delay(self, attempt: int, long_retries: bool) -> float:
        o = self.options
        if long_retries:
            base = min(4.0 ** (attempt + 1), o.long_retry_max_delay)
        else:
            base = min(o.retry_initial_delay * 2**attempt, o.retry_max_delay)
        return base * self._rng.uniform(0.8, 1.4)

    def _url_for(self, resolved: ResolvedServer, path: str, query_string: str) -> yarl.URL:
        if resolved.srv:
            assert resolved.tls_server_name is not None
            host, port = resolved.tls_server_name, 0
            self._target_resolver.routes[(host, 0)] = list(resolved.targets)
        else:
            host, port = resolved.targets[0]
        return yarl.URL.build(
            scheme="https",
            host=_bracket(host),
            port=port,
            path=path,
            query_string=query_string,
            encoded=True,
        )

    async def _open(
        self,
        method: str,
        destination: str,
        path: str,
        query_string: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> aiohttp.ClientResponse:
        """Connect and send; the response with its body not read yet (release it)."""
        resolved = await self.resolver.resolve(destination)
        for host, _port in resolved.targets:
            if is_ip_address(host):
                self.ip_filter.check(host.strip("[]"), destination=destination)
        url = self._url_for(resolved, path, query_string)
        headers = {**headers, "Host": resolved.host_header}
        session = self._get_session()
        with self._transport_errors(method, destination):
            return await session.request(
                method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.options.connect_timeout,
                    sock_connect=self.options.connect_timeout,
                ),
            )
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transport_errors(self, method: str, destination: str) -> Iterator[None]:
        """aiohttp and socket errors as this client's errors."""
        try:
            yield
        except FederationError as exc:
            exc.destination = exc.destination or destination
            raise
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            if _is_cert_error(exc):
                raise TlsVerificationError(
                    f"TLS verification of {destination} failed: {exc}", destination=destination
                ) from exc
            raise DestinationUnreachableError(
                f"{method} {destination}: {type(exc).__name__}: {exc}", destination=destination
            ) from exc

    async def _attempt(
        self,
        method: str,
        destination: str,
        path: str,
        query_string: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> FederationResponse:
        resp = await self._open(method, destination, path, query_string, body, headers)
        try:
            with self._transport_errors(method, destination):
                try:
                    raw = await _read_limited(resp, self.options.max_response_size)
                except ValueError as exc:
                    raise InvalidResponseError(
                        str(exc), status=resp.status, destination=destination
                    ) from None
        finally:
            resp.release()
        status, resp_headers = resp.status, resp.headers
        parsed: Any = None
        if raw:
            try:
                parsed = decode_json(raw)
            except ValueError as exc:
                if 200 <= status < 300:
                    raise InvalidResponseError(
                        f"{destination} sent a non-JSON {status} response",
                        status=status,
                        destination=destination,
                    ) from exc
        return FederationResponse(status, resp_headers, parsed, raw)

    async def fetch_url(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        allow_http: bool = False,
        max_size: int | None = None,
    ) -> FederationResponse:
        """An unsigned request to ``url`` (not a Matrix server name) through this client's
        connector: every address it resolves to must pass the IP block list, a redirect is
        never followed (:class:`FederationDeniedError`), and ``http://`` is refused unless
        ``allow_http``. For identity servers and other URLs that remote input names."""
        target = yarl.URL(url)
        if target.scheme != "https" and not (allow_http and target.scheme == "http"):
            raise FederationDeniedError(f"refusing {target.scheme or 'a relative'} URL {url}")
        host = target.raw_host or ""
        if not host:
            raise FederationDeniedError(f"no host in URL {url}")
        if is_ip_address(host):
            self.ip_filter.check(host.strip("[]"), destination=host)
        session = self._get_session()
        limit = max_size or self.options.max_response_size
        try:
            async with asyncio.timeout(self.options.request_timeout):
                async with session.request(
                    method,
                    target,
                    data=None if json_body is None else encode_json(json_body),
                    headers={
                        **({"Content-Type": "application/json"} if json_body is not None else {}),
                        **(headers or {}),
                    },
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        connect=self.options.connect_timeout,
                        sock_connect=self.options.connect_timeout,
                    ),
                ) as resp:
                    if 300 <= resp.status < 400:
                        raise FederationDeniedError(
                            f"{url} answered {resp.status}: redirects are not followed",
                            destination=host,
                        )
                    try:
                        raw = await _read_limited(resp, limit)
                    except ValueError as exc:
                        raise InvalidResponseError(
                            str(exc), status=resp.status, destination=host
                        ) from None
                    status, resp_headers = resp.status, resp.headers
        except FederationError:
            raise
        except TimeoutError as exc:
            raise RequestTimeoutError(f"{method} {url} timed out", destination=host) from exc
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            if _is_cert_error(exc):
                raise TlsVerificationError(
                    f"TLS verification of {host} failed: {exc}", destination=host
                ) from exc
            raise DestinationUnreachableError(
                f"{method} {url}: {type(exc).__name__}: {exc}", destination=host
            ) from exc
        try:
            parsed = decode_json(raw) if raw else None
        except ValueError:
            parsed = None
        return FederationResponse(status, resp_headers, parsed, raw)

    async def _json(self, method: str, destination: str, path: str, **kwargs: Any) -> Any:
        resp = await self.request(method, destination, path, **kwargs)
        if resp.ok:
            return resp.body
        body = resp.body
        errcode = error = None
        if isinstance(body, dict):
            if isinstance(body.get("errcode"), str):
                errcode = body["errcode"]
            if isinstance(body.get("error"), str):
                error = body["error"]
        raise HttpResponseError(
            resp.status,
            errcode,
            error,
            body,
            _retry_after_ms(resp.headers, body),
            destination=destination,
        )

    async def get_json(
        self, destination: str, path: str, *, query: QueryArg = None, **kwargs: Any
    ) -> Any:
        """GET, return the parsed JSON body; non-2xx raises :class:`HttpResponseError`."""
        return await self._json("GET", destination, path, query=query, **kwargs)

    async def put_json(
        self,
        destination: str,
        path: str,
        json_body: Any,
        *,
        query: QueryArg = None,
        **kwargs: Any,
    ) -> Any:
        """PUT JSON (retried only with ``idempotent=True``); raises on non-2xx."""
        return await self._json(
            "PUT", destination, path, query=query, json_body=json_body, **kwargs
        )

    async def post_json(
        self,
        destination: str,
        path: str,
        json_body: Any,
        *,
        query: QueryArg = None,
        **kwargs: Any,
    ) -> Any:
        """POST JSON (retried only with ``idempotent=True``); raises on non-2xx."""
        return await self._json(
            "POST", destination, path, query=query, json_body=json_body, **kwargs
        )
