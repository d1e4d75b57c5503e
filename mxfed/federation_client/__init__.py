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
    StreamedResponse,
    TransportFailure,
    build_ssl_context,
    classify_transport_error,
    describe_transport_error,
    encode_query,
    federation_path,
)
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
    DEFAULT_FEDERATION_PORT,
    AiodnsResolver,
    DiscoveryRule,
    DiscoveryTrail,
    DnsLookupError,
    DnsResolver,
    IpDecision,
    IpFilter,
    ResolvedServer,
    ServerResolver,
    SrvLookup,
    SrvRecord,
    StaticDnsResolver,
    WellKnownFailure,
    WellKnownFetcher,
    WellKnownHop,
    WellKnownResponse,
)

__all__ = [
    "DEFAULT_BLOCKED_IP_RANGES",
    "DEFAULT_FEDERATION_PORT",
    "AiodnsResolver",
    "DestinationBlockedError",
    "DestinationUnreachableError",
    "DiscoveryRule",
    "DiscoveryTrail",
    "DnsLookupError",
    "DnsResolver",
    "FederationClient",
    "FederationDeniedError",
    "FederationError",
    "FederationResponse",
    "HttpResponseError",
    "HttpWellKnownFetcher",
    "InvalidResponseError",
    "IpDecision",
    "IpFilter",
    "NotRetryingDestination",
    "OutboundOptions",
    "RequestTimeoutError",
    "ResolvedServer",
    "ServerResolver",
    "SrvLookup",
    "SrvRecord",
    "StaticDnsResolver",
    "StreamedResponse",
    "TlsVerificationError",
    "TransportFailure",
    "WellKnownFailure",
    "WellKnownFetcher",
    "WellKnownHop",
    "WellKnownResponse",
    "build_ssl_context",
    "classify_transport_error",
    "describe_transport_error",
    "encode_query",
    "federation_path",
]
