"""What the doctor's findings mean: causes, and the words that explain them.

Pure functions over what the checks found (no I/O), used by
:mod:`services.keys.doctor.diagnosis`.
"""

from __future__ import annotations

import email.utils
from pathlib import Path
from typing import Any

from mxfed.federation_client import (
    DiscoveryRule,
    FederationDeniedError,
    FederationError,
    HttpResponseError,
    InvalidResponseError,
    IpDecision,
    TlsVerificationError,
    TransportFailure,
    WellKnownFailure,
    WellKnownResponse,
    classify_transport_error,
    describe_transport_error,
)
from services.keys.doctor.certificates import (
    CertificateFacts,
    certificate_holds,
    describe_certificate,
)
from services.keys.doctor.probes import (
    X509_CERT_HAS_EXPIRED,
    X509_CERT_NOT_YET_VALID,
    X509_HOSTNAME_MISMATCH,
    X509_IP_ADDRESS_MISMATCH,
    AddressProbe,
)
from services.keys.doctor.report import Cause

BLOCKED_OPTION = "federation_blocked_ip_ranges"
ALLOWED_OPTION = "federation_allowed_ip_ranges"
VERIFY_TLS_OPTION = "federation_verify_tls"

WELL_KNOWN_CAUSES = {
    WellKnownFailure.HTTP_STATUS: Cause.WELL_KNOWN_HTTP_STATUS,
    WellKnownFailure.REDIRECT_LOOP: Cause.WELL_KNOWN_REDIRECT_LOOP,
    WellKnownFailure.TOO_MANY_REDIRECTS: Cause.WELL_KNOWN_TOO_MANY_REDIRECTS,
    WellKnownFailure.NOT_HTTPS: Cause.WELL_KNOWN_NOT_HTTPS,
    WellKnownFailure.TOO_LARGE: Cause.WELL_KNOWN_TOO_LARGE,
    WellKnownFailure.NOT_JSON: Cause.WELL_KNOWN_NOT_JSON,
    WellKnownFailure.INVALID: Cause.WELL_KNOWN_INVALID,
    WellKnownFailure.BLOCKED: Cause.WELL_KNOWN_BLOCKED,
    WellKnownFailure.TIMEOUT: Cause.WELL_KNOWN_TIMEOUT,
    WellKnownFailure.TLS: Cause.WELL_KNOWN_TLS,
    WellKnownFailure.UNREACHABLE: Cause.WELL_KNOWN_UNREACHABLE,
}

_TRANSPORT_CAUSES = {
    TransportFailure.CONNECTION_REFUSED: Cause.CONNECTION_REFUSED,
    TransportFailure.TIMEOUT: Cause.CONNECTION_TIMEOUT,
    TransportFailure.TLS_CERTIFICATE: Cause.CERTIFICATE_UNTRUSTED,
    TransportFailure.TLS: Cause.TLS_HANDSHAKE_FAILED,
    TransportFailure.DNS: Cause.DNS_LOOKUP_FAILED,
    TransportFailure.OTHER: Cause.CONNECTION_FAILED,
}

RULE_REASONS = {
    DiscoveryRule.IP_LITERAL: "the server name is an IP address",
    DiscoveryRule.EXPLICIT_PORT: "the server name has an explicit port",
    DiscoveryRule.DELEGATED_IP_LITERAL: "well-known delegates to an IP address",
    DiscoveryRule.DELEGATED_EXPLICIT_PORT: "well-known delegates to a name with a port",
    DiscoveryRule.DELEGATED_SRV: "well-known delegates to a name with SRV records",
    DiscoveryRule.DELEGATED_DEFAULT_PORT: (
        "well-known delegates to a name without port or SRV records: port 8448"
    ),
    DiscoveryRule.SRV: "no delegation; the server name has SRV records",
    DiscoveryRule.DEFAULT_PORT: "no delegation and no SRV records: port 8448",
}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def iso_ms(ts_ms: int) -> str:
    return email.utils.formatdate(ts_ms / 1000, usegmt=True)


def for_how_long(ms: int) -> str:
    seconds = round(abs(ms) / 1000)
    if seconds < 120:
        return f"{seconds} s"
    if round(seconds / 60) < 120:
        return f"{round(seconds / 60)} min"
    if round(seconds / 3600) < 72:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_reason(decision: IpDecision) -> str:
    return (
        f"{decision.address} is in {decision.blocked_by} of {BLOCKED_OPTION}; "
        f"{ALLOWED_OPTION} can allow it"
    )


def request_failure(exc: FederationError) -> tuple[Cause, str]:
    """The cause of a failed request, and its text."""
    if isinstance(exc, HttpResponseError):
        return Cause.HTTP_ERROR, str(exc)
    if isinstance(exc, InvalidResponseError):
        return Cause.INVALID_RESPONSE, str(exc)
    if isinstance(exc, FederationDeniedError):
        return Cause.IP_BLOCKED, str(exc)
    cause = _TRANSPORT_CAUSES[classify_transport_error(exc)]
    if isinstance(exc, TlsVerificationError) or cause is Cause.CERTIFICATE_UNTRUSTED:
        return Cause.CERTIFICATE_UNTRUSTED, describe_transport_error(exc)
    return cause, str(exc)


def clock_skew(remote_date: float, sent_at: float, received_at: float) -> float:
    """Seconds the remote clock is ahead (negative: behind) of ours.

    ``Date`` has a resolution of one second and was set between our sending
    and our receiving: any value in that window means no measurable skew.
    """
    if remote_date + 1 < sent_at:
        return remote_date + 1 - sent_at
    if remote_date > received_at:
        return remote_date - received_at
    return 0.0


_NAME_CODES = (X509_HOSTNAME_MISMATCH, X509_IP_ADDRESS_MISMATCH)
_CONNECT_CAUSES = {
    TransportFailure.CONNECTION_REFUSED: Cause.CONNECTION_REFUSED,
    TransportFailure.TIMEOUT: Cause.CONNECTION_TIMEOUT,
}
CERTIFICATE_CAUSES = frozenset(
    {
        Cause.CERTIFICATE_NAME_MISMATCH,
        Cause.CERTIFICATE_EXPIRED,
        Cause.CERTIFICATE_NOT_YET_VALID,
        Cause.CERTIFICATE_UNTRUSTED,
    }
)


def certificate_file_facts(path: Path) -> CertificateFacts:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return describe_certificate(certificate.public_bytes(Encoding.DER))


def means_no_delegation(response: WellKnownResponse) -> bool:
    """A 404 or nothing on port 443: the ordinary way of having no well-known."""
    if response.failure is WellKnownFailure.CONNECTION_REFUSED:
        return True
    return (
        response.failure is WellKnownFailure.HTTP_STATUS
        and bool(response.hops)
        and response.hops[-1].status == 404
    )


def well_known_problem(response: WellKnownResponse) -> str:
    failure = response.failure
    last = response.hops[-1] if response.hops else None
    if failure is WellKnownFailure.NOT_JSON and last is not None:
        return f"the answer is not JSON (Content-Type: {last.content_type or 'none'})"
    if failure is WellKnownFailure.HTTP_STATUS and last is not None:
        return f"HTTP {last.status}"
    if failure is WellKnownFailure.REDIRECT_LOOP:
        return f"redirects in a loop ({len(response.hops)} requests)"
    if failure is WellKnownFailure.TOO_MANY_REDIRECTS:
        return f"redirects without end ({len(response.hops)} requests)"
    return response.error or "no usable answer"


def judge_probe(
    probe: AddressProbe, expected: str, now: float
) -> tuple[dict[str, Any], Cause | None, str]:
    """The facts of one probe, its first problem and a line about it."""
    where = host_port(probe.address, probe.port)
    entry: dict[str, Any] = {
        "address": probe.address,
        "port": probe.port,
        "connected": probe.connected,
        "connect_ms": _ms(probe.connect_seconds),
        "handshake_ms": _ms(probe.handshake_seconds),
        "error": probe.error,
        "protocol": probe.protocol,
        "cipher": probe.cipher,
        "certificates": [],
        "problems": [],
    }
    if probe.connect_failure is not None:
        cause = _CONNECT_CAUSES.get(probe.connect_failure, Cause.CONNECTION_FAILED)
        entry["problems"] = [cause.value]
        word = {
            Cause.CONNECTION_REFUSED: "connection refused",
            Cause.CONNECTION_TIMEOUT: "connection timed out",
        }.get(cause, f"cannot connect ({probe.error})")
        return entry, cause, f"{where}: {word}"
    if not probe.handshake_done:
        entry["problems"] = [Cause.TLS_HANDSHAKE_FAILED.value]
        return entry, Cause.TLS_HANDSHAKE_FAILED, f"{where}: TLS handshake failed: {probe.error}"
    chain: list[CertificateFacts] = []
    for der in probe.chain:
        try:
            chain.append(describe_certificate(der))
        except ValueError as exc:
            entry["certificate_error"] = str(exc)
            break
    entry["certificates"] = [facts.as_json() for facts in chain]
    if not chain:
        entry["problems"] = [Cause.TLS_HANDSHAKE_FAILED.value]
        return entry, Cause.TLS_HANDSHAKE_FAILED, f"{where}: no certificate could be read"
    leaf = chain[0]
    problems: list[tuple[Cause, str]] = []
    verification = probe.verification
    code = verification.verify_code if verification is not None else None
    if not certificate_holds(leaf, expected) or code in _NAME_CODES:
        names = ", ".join(leaf.names) or "no name"
        problems.append(
            (Cause.CERTIFICATE_NAME_MISMATCH, f"certificate for {names}, expected {expected}")
        )
    if leaf.not_after.timestamp() < now or code == X509_CERT_HAS_EXPIRED:
        when = leaf.not_after.isoformat(timespec="seconds")
        problems.append((Cause.CERTIFICATE_EXPIRED, f"certificate expired at {when}"))
    if leaf.not_before.timestamp() > now or code == X509_CERT_NOT_YET_VALID:
        when = leaf.not_before.isoformat(timespec="seconds")
        problems.append((Cause.CERTIFICATE_NOT_YET_VALID, f"certificate valid only from {when}"))
    named_codes = (*_NAME_CODES, X509_CERT_HAS_EXPIRED, X509_CERT_NOT_YET_VALID)
    if verification is not None and not verification.trusted and code not in named_codes:
        problems.append(
            (Cause.CERTIFICATE_UNTRUSTED, f"certificate not trusted: {verification.message}")
        )
    entry["trusted"] = verification.trusted if verification is not None else None
    entry["verify_error"] = verification.message if verification is not None else None
    entry["problems"] = [cause.value for cause, _ in problems]
    if problems:
        return entry, problems[0][0], f"{where}: " + "; ".join(text for _, text in problems)
    return (
        entry,
        None,
        f"{where}: {probe.protocol}, certificate for {', '.join(leaf.names)} "
        f"until {leaf.not_after.date().isoformat()}, trusted",
    )
