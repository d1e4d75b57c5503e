"""Connecting to one address the way federation would, and looking at its TLS.

Two connections per address: the first with verification off, to see the
certificate chain as presented even when it would be refused; the second
verifying it the way a federating peer does (trust store, then the expected
name), so the report can say both what was presented and what a verifying
peer concludes.
"""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from mxfed.federation_client import TransportFailure, classify_transport_error

# OpenSSL X509_V_ERR_* codes that the report names on their own.
X509_CERT_NOT_YET_VALID = 9
X509_CERT_HAS_EXPIRED = 10
X509_HOSTNAME_MISMATCH = 62
X509_IP_ADDRESS_MISMATCH = 64


@dataclass
class Verification:
    """What a verifying peer concluded about the certificate."""

    trusted: bool
    #: OpenSSL's X509_V_ERR_* code and text when it refused the certificate.
    verify_code: int | None = None
    message: str | None = None


@dataclass
class AddressProbe:
    address: str
    port: int
    connect_seconds: float | None = None
    #: Set when the TCP connection could not be made.
    connect_failure: TransportFailure | None = None
    handshake_seconds: float | None = None
    #: The error text of a failed connection or handshake.
    error: str | None = None
    protocol: str | None = None
    cipher: str | None = None
    #: DER certificates as presented, leaf first.
    chain: list[bytes] = field(default_factory=list)
    #: ``None`` when the verifying connection could not be made at all.
    verification: Verification | None = None

    @property
    def connected(self) -> bool:
        return self.connect_seconds is not None

    @property
    def handshake_done(self) -> bool:
        return self.handshake_seconds is not None


def _inspecting_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def presented_chain(ssl_object: Any) -> list[bytes]:
    """The peer's certificates as it sent them (verified or not), leaf first."""
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+
        return list(public())
    private = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if private is not None:  # the same call, not yet public before 3.13
        return [cert.public_bytes(_ssl.ENCODING_DER) for cert in private() or []]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


async def _verify(
    address: str, port: int, expected: str, trust: ssl.SSLContext, attempt_timeout: float
) -> Verification | None:
    try:
        async with asyncio.timeout(attempt_timeout):
            _, writer = await asyncio.open_connection(
                address, port, ssl=trust, server_hostname=expected
            )
    except ssl.SSLCertVerificationError as exc:
        return Verification(False, exc.verify_code, exc.verify_message)
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    await _close(writer)
    return Verification(True)


async def probe_address(
    address: str,
    port: int,
    *,
    sni: str | None,
    expected: str,
    trust: ssl.SSLContext,
    attempt_timeout: float,
) -> AddressProbe:
    """Connect to ``address``:``port``, shake hands with SNI ``sni``, look at the chain.

    ``expected`` is the name (or IP address) the certificate must hold;
    ``trust`` a verifying client context (``check_hostname`` on). Connecting
    and each handshake get ``attempt_timeout`` seconds.
    """
    probe = AddressProbe(address, port)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(attempt_timeout):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError) as exc:
        probe.connect_failure = classify_transport_error(exc)
        probe.error = _describe(exc)
        return probe
    probe.connect_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        async with asyncio.timeout(attempt_timeout):
            await writer.start_tls(_inspecting_context(), server_hostname=sni)
        probe.handshake_seconds = time.perf_counter() - started
        ssl_object = writer.get_extra_info("ssl_object")
        probe.chain = presented_chain(ssl_object)
        probe.protocol = ssl_object.version()
        cipher = ssl_object.cipher()
        probe.cipher = cipher[0] if cipher else None
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        probe.error = _describe(exc)
        return probe
    finally:
        await _close(writer)
    probe.verification = await _verify(address, port, expected, trust, attempt_timeout)
    return probe
