"""Exceptions raised by the outbound federation client.

Hierarchy::

    FederationError
    ├── FederationDeniedError        invalid server name, or every address is blocked
    │   └── DestinationBlockedError  the operator blocks the server (mxfed servers block)
    ├── NotRetryingDestination       the caller's backoff says "not now" (no I/O done)
    ├── DestinationUnreachableError  DNS / connect / TLS / timeout failures
    │   ├── TlsVerificationError     the peer's certificate did not validate
    │   └── RequestTimeoutError      the overall request deadline passed
    ├── InvalidResponseError         a 2xx whose body is not JSON (or is too large)
    └── HttpResponseError            a non-2xx answer (raised by get_json/put_json/...)
"""

from __future__ import annotations

from typing import Any


class FederationError(Exception):
    """Base class of every error raised by :mod:`mxfed.federation_client`."""

    def __init__(self, message: str, *, destination: str | None = None) -> None:
        super().__init__(message)
        self.destination = destination


class FederationDeniedError(FederationError):
    """We refuse to talk to this destination (bad server name, blocked IP range).

    Raised before any connection is opened; never retried.
    """


class DestinationBlockedError(FederationDeniedError):
    """The operator's server policy refuses federation with this destination."""


class NotRetryingDestination(FederationError):
    """The caller-supplied ``backoff_check`` says the destination is backed off.

    ``retry_in`` is the number of seconds until the caller's backoff expires.
    """

    def __init__(self, destination: str, retry_in: float) -> None:
        super().__init__(
            f"not retrying {destination!r} for another {retry_in:.1f}s", destination=destination
        )
        self.retry_in = retry_in


class DestinationUnreachableError(FederationError):
    """DNS lookup, TCP connect, TLS handshake or transport failure."""


class TlsVerificationError(DestinationUnreachableError):
    """The peer's certificate failed validation (never retried)."""


class RequestTimeoutError(DestinationUnreachableError):
    """The request (including its retries) did not finish before its deadline."""


class InvalidResponseError(FederationError):
    """A successful status whose body we cannot use (not JSON, too large)."""

    def __init__(self, message: str, *, status: int, destination: str | None = None) -> None:
        super().__init__(message, destination=destination)
        self.status = status


class HttpResponseError(FederationError):
    """The remote server answered with a non-2xx status.

    ``errcode``/``error`` come from a Matrix standard error body when present;
    ``body`` is the parsed JSON (or ``None``); ``retry_after_ms`` from the
    body's ``retry_after_ms`` or the ``Retry-After`` header.
    """

    def __init__(
        self,
        status: int,
        errcode: str | None = None,
        error: str | None = None,
        body: Any = None,
        retry_after_ms: int | None = None,
        *,
        destination: str | None = None,
    ) -> None:
        detail = f"{errcode}: {error}" if errcode else (error or "")
        super().__init__(f"HTTP {status} {detail}".rstrip(), destination=destination)
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body
        self.retry_after_ms = retry_after_ms
