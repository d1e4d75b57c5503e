"""The deployment's private CA and the certificates of the internal plane.

Every gRPC connection inside mxfed is mutual TLS with certificates from one
private CA (see ``mxfed/internal_plane.py``). This module issues them; it is
the only one that imports ``cryptography`` for it, and only short-lived
processes run it (``mxfed run`` on a first start, ``mxfed init``, ``mxfed
actors add``), so no resident process carries the crypto library.

Layout under ``internal_tls_dir`` (default ``<data_dir>/internal``)::

    ca.crt, ca.key                 the CA (or the operator's, from config paths)
    part-<name>/                   one per part: keys, events, sender, backfill, gateway, ...
    operator/                      the operator (the ``mxfed`` CLI)
    actor-<name>/                  one per local actor (a bot or bridge)

Each identity directory holds ``tls.crt``, ``tls.key`` (0600) and a copy of
``ca.crt``: it is all a process (or a bot on another machine) needs, and
what a container mounts. The identity is a SAN URI (``mxfed:part/events``,
``mxfed:operator``, ``mxfed:actor/<name>``); a part's certificate also names
``<part>.mxfed.internal``, the fixed name clients check the server against
whatever address they dial (compose DNS, Kubernetes services, loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mxfed.config import Config
from mxfed.identity_files import IdentityError, write_private_file
from mxfed.internal_identity import (
    CA_CERTIFICATE_FILE,
    CERTIFICATE_FILE,
    PRIVATE_KEY_FILE,
    Caller,
    CallerKind,
    identity_directory,
    server_name_of,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_VALIDITY = datetime.timedelta(days=3650)
# Ten years like the CA: nothing renews them in place; re-issue by deleting
# an identity directory and running ``mxfed init`` again.
CERTIFICATE_VALIDITY = datetime.timedelta(days=3650)


class PkiError(IdentityError):
    """Certificates could not be issued."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def make_ca(certificate_path: Path, key_path: Path, common_name: str) -> None:
    """A new self-signed CA at these paths (the key created 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    if not write_private_file(key_path, _key_pem(key)):
        raise PkiError(
            f"{key_path} appeared while making the CA; not overwriting it",
            "start again (another process was making the CA at the same time)",
        )
    certificate_path.parent.mkdir(parents=True, exist_ok=True)
    certificate_path.write_bytes(_certificate_pem(certificate))


def issue(
    directory: Path,
    caller: Caller,
    ca_certificate_path: Path,
    ca_key_path: Path,
) -> Path:
    """Issue ``caller``'s certificate into ``directory`` (its identity directory); returns it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        ca_pem = ca_certificate_path.read_bytes()
        ca_key_pem = ca_key_path.read_bytes()
    except OSError as exc:
        raise PkiError(
            f"cannot issue a certificate for {caller.uri}: {exc}",
            "run it where the CA key is (internal_ca_key_path), e.g. in compose's init container",
        ) from exc
    ca_certificate = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = _new_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(caller.uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if caller.kind is CallerKind.PART:
        names.append(x509.DNSName(server_name_of(caller.name)))
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, caller.uri)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + CERTIFICATE_VALIDITY, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    staging = directory.with_name(f"{directory.name}.{os.getpid()}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_private_file(staging / PRIVATE_KEY_FILE, _key_pem(key))
    (staging / CERTIFICATE_FILE).write_bytes(_certificate_pem(certificate))
    (staging / CA_CERTIFICATE_FILE).write_bytes(ca_pem)
    # Appears whole or not at all: a process never reads half an identity.
    try:
        staging.rename(directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / CERTIFICATE_FILE).exists():
            raise
        # Another process issued it at the same moment; theirs stands.
    return directory


def ensure(
    tls_dir: Path,
    ca_certificate_path: Path,
    ca_key_path: Path,
    callers: list[Caller],
    ca_name: str,
) -> list[Caller]:
    """Make the CA when there is none, and every missing identity; returns those issued."""
    if not ca_certificate_path.exists():
        if ca_key_path.exists():
            raise PkiError(
                f"{ca_key_path} exists without its certificate {ca_certificate_path}",
                "put the CA certificate back, or remove both to make a new CA",
            )
        make_ca(ca_certificate_path, ca_key_path, ca_name)
    issued = []
    for caller in callers:
        directory = identity_directory(tls_dir, caller)
        if not (directory / CERTIFICATE_FILE).exists():
            issue(directory, caller, ca_certificate_path, ca_key_path)
            issued.append(caller)
    return issued


def missing(config: Config, callers: list[Caller]) -> list[Caller]:
    """Those of ``callers`` without a certificate yet (a check that needs no crypto library)."""
    return [
        caller
        for caller in callers
        if not (
            identity_directory(config.internal_tls_directory, caller) / CERTIFICATE_FILE
        ).exists()
    ]


def ca_name(config: Config) -> str:
    return f"mxfed internal CA for {config.server_name}"


async def ensure_in_subprocess(config: Config, callers: list[Caller]) -> list[Caller]:
    """Issue the missing ones of ``callers`` (and the CA if needed) in a short-lived process.

    Resident processes call this so that the crypto library is loaded only by
    the helper process, and only when something is missing; returns the
    callers it issued.
    """
    wanted = missing(config, callers)
    if not wanted:
        return []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mxfed.internal_pki",
        "--tls-dir",
        str(config.internal_tls_directory),
        "--ca-certificate",
        str(config.internal_ca_certificate),
        "--ca-key",
        str(config.internal_ca_key),
        "--ca-name",
        ca_name(config),
        *(caller.uri for caller in wanted),
        stderr=asyncio.subprocess.PIPE,
    )
    _, error = await process.communicate()
    if process.returncode != 0:
        raise PkiError(
            error.decode(errors="replace").strip() or "could not issue certificates",
            "see the line above; the CA key (internal_ca_key_path) must be readable here",
        )
    return wanted


def main(argv: list[str]) -> int:
    """``python -m mxfed.internal_pki --tls-dir D --ca-certificate C --ca-key K --ca-name N URI…``

    Issues the identities named by their URIs (``mxfed:part/events``...) into
    D, making the CA first when there is none.
    """
    parser = argparse.ArgumentParser(prog="python -m mxfed.internal_pki")
    parser.add_argument("--tls-dir", type=Path, required=True)
    parser.add_argument("--ca-certificate", type=Path, required=True)
    parser.add_argument("--ca-key", type=Path, required=True)
    parser.add_argument("--ca-name", required=True)
    parser.add_argument("identities", nargs="+")
    args = parser.parse_args(argv)
    try:
        callers = [Caller.parse(uri) for uri in args.identities]
        ensure(args.tls_dir, args.ca_certificate, args.ca_key, callers, args.ca_name)
    except PkiError as exc:
        print(exc.line(), file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"mxfed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
