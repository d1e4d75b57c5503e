"""Outbound federation HTTP client: server discovery, X-Matrix signing, retries.

Typical use::

    async with FederationClient("example.org", signing_key, "ed25519:a1", OutboundOptions()) as fc:
        event = await fc.get_json("matrix.org", federation_path(
            "_matrix", "federation", "v1", "event", event_id))
"""

from .client import (
    FederationClient,
    FederationResponse,
    HttpWellKnownFetcher,
    OutboundOptions,
    build_ssl_context,
    encode_query,
    federation_path,
)
from .errors import (
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
    DEFAULT_FEDERATION_PORT,
    AiodnsResolver,
    DnsLookupError,
    DnsResolver,
    IpFilter,
    ResolvedServer,
    ServerResolver,
    SrvRecord,
    StaticDnsResolver,
    WellKnownFetcher,
    WellKnownResponse,
)

__all__ = [
    "DEFAULT_BLOCKED_IP_RANGES",
    "DEFAULT_FEDERATION_PORT",
    "AiodnsResolver",
    "DestinationUnreachableError",
    "DnsLookupError",
    "DnsResolver",
    "FederationClient",
    "FederationDeniedError",
    "FederationError",
    "FederationResponse",
    "HttpResponseError",
    "HttpWellKnownFetcher",
    "InvalidResponseError",
    "IpFilter",
    "NotRetryingDestination",
    "OutboundOptions",
    "RequestTimeoutError",
    "ResolvedServer",
    "ServerResolver",
    "SrvRecord",
    "StaticDnsResolver",
    "TlsVerificationError",
    "WellKnownFetcher",
    "WellKnownResponse",
    "build_ssl_context",
    "encode_query",
    "federation_path",
]
