"""Facts about presented certificates, and whether they hold a name.

``cryptography`` is imported only when a certificate is described (the keys
process does not load it otherwise; see mxfed/identity_files.py).

Name matching follows RFC 6125 as TLS libraries apply it: DNS names of the
subjectAltName, a ``*`` only as the whole leftmost label and matching exactly
one label; an IP address only against IP entries; the subject's common name
only when the certificate has no subjectAltName at all.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    issuer: str
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    sha256: str

    @property
    def names(self) -> tuple[str, ...]:
        """What the certificate is for, as a reader would list it."""
        sans = self.dns_names + self.ip_addresses
        if sans:
            return sans
        return (self.common_name,) if self.common_name else ()

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "sha256": self.sha256,
        }


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_certificate(der: bytes) -> CertificateFacts:
    """Parse one DER certificate (raises ``ValueError`` if it is not one)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        dns_names = [str(name) for name in sans.get_values_for_type(x509.DNSName)]
        ip_addresses = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = common_names[0].value if common_names else None
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=common_name if isinstance(common_name, str) else None,
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ip_addresses),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=hashlib.sha256(der).hexdigest(),
    )


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    first, _, rest = host.partition(".")
    return bool(first) and rest == pattern[2:] and "*" not in rest


def certificate_holds(facts: CertificateFacts, expected: str) -> bool:
    """True when ``expected`` (a DNS name or an IP address) is a name of the certificate."""
    try:
        address = ipaddress.ip_address(expected.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        return any(ipaddress.ip_address(ip) == address for ip in facts.ip_addresses)
    if facts.dns_names or facts.ip_addresses:
        return any(_dns_matches(name, expected) for name in facts.dns_names)
    return facts.common_name is not None and _dns_matches(facts.common_name, expected)
