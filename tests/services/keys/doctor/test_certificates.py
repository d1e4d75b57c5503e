"""Certificate facts and name matching (pure), the clock-skew window, and the
promise that the keys process loads ``cryptography`` only when a diagnosis runs."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest

from services.keys.doctor.certificates import CertificateFacts, certificate_holds
from services.keys.doctor.judgements import clock_skew

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def facts(dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), cn: str | None = None):
    return CertificateFacts("CN=x", "CN=ca", cn, dns, ips, NOW, NOW, "0" * 64)


@pytest.mark.parametrize(
    ("certificate", "name", "holds"),
    [
        (facts(dns=("matrix.example.org",)), "matrix.example.org", True),
        (facts(dns=("Matrix.Example.org",)), "matrix.example.org", True),
        (facts(dns=("*.example.org",)), "matrix.example.org", True),
        (facts(dns=("*.example.org",)), "example.org", False),
        (facts(dns=("*.example.org",)), "a.b.example.org", False),
        (facts(dns=("other.example",)), "matrix.example.org", False),
        (facts(ips=("127.0.0.1",)), "127.0.0.1", True),
        (facts(dns=("127.0.0.1",)), "127.0.0.1", False),  # an IP is only held by an IP entry
        (facts(ips=("::1",)), "[::1]", True),
        (facts(cn="matrix.example.org"), "matrix.example.org", True),  # no SAN: the CN
        (facts(dns=("a.example",), cn="matrix.example.org"), "matrix.example.org", False),
    ],
)
def test_certificate_holds(certificate: CertificateFacts, name: str, holds: bool) -> None:
    assert certificate_holds(certificate, name) is holds


def test_clock_skew_ignores_the_date_resolution_and_the_round_trip() -> None:
    assert clock_skew(1000.0, 1000.4, 1000.9) == 0.0  # truncated to the second
    assert clock_skew(1002.0, 1000.0, 1001.0) == pytest.approx(1.0)
    assert clock_skew(900.0, 1000.0, 1001.0) == pytest.approx(-99.0)


def test_the_keys_process_does_not_load_cryptography_until_a_diagnosis() -> None:
    probe = "import sys, services.keys.server; print('cryptography' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
