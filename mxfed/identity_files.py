"""The files that make up this server's identity: TLS pair and signing key.

Both are generated on first run when absent. The signing key file holds one
line ``ed25519 <version> <unpadded base64 seed>`` (the format Synapse and
Dendrite also read); its key id never changes once written, because remote
servers cache keys by id and never refetch on a mismatch. Creation uses
O_EXCL so processes starting together agree on a single key. Key rotation
replaces the file atomically; every process that signs reads it through
:func:`current_signing_key`, which notices the new file within a second.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import string
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from matrix_protocol.encoding import decode_base64, encode_base64
from mxfed.startup import StartupError

_VERSION_ALPHABET = string.ascii_letters + string.digits + "_"


class IdentityError(StartupError):
    """A file of this server's identity is missing or unusable: which (``cause``) and what
    makes it right (``fix``); fatal at start-up, a restart would not cure it."""


@dataclass(frozen=True)
class ServerSigningKey:
    key_id: str  # "ed25519:<version>"
    signing_key: SigningKey

    @property
    def version(self) -> str:
        return self.key_id.split(":", 1)[1]


def format_signing_key(key: ServerSigningKey) -> str:
    return f"ed25519 {key.version} {encode_base64(bytes(key.signing_key))}\n"


def parse_signing_key(text: str) -> ServerSigningKey:
    fields = text.split()
    if len(fields) != 3 or fields[0] != "ed25519":
        raise ValueError("signing key file must hold 'ed25519 <version> <base64 seed>'")
    return ServerSigningKey(f"ed25519:{fields[1]}", SigningKey(decode_base64(fields[2])))


def new_signing_key() -> ServerSigningKey:
    version = "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(8))
    return ServerSigningKey(f"ed25519:{version}", SigningKey.generate())


def write_private_file(path: Path, content: bytes) -> bool:
    """Create ``path`` holding ``content``, mode 0600 from the first byte; False if it exists.

    O_EXCL: of processes starting together, exactly one creates the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return True


def load_or_create_signing_key(path: Path) -> ServerSigningKey:
    if not path.exists():
        write_private_file(path, format_signing_key(new_signing_key()).encode())
    return parse_signing_key(path.read_text())


def ensure_signing_key(path: Path) -> str:
    """Create the signing key file when absent; returns its key id (the key is not kept)."""
    if not path.exists():
        write_private_file(path, format_signing_key(new_signing_key()).encode())
    fields = path.read_text().split()
    if len(fields) != 3 or fields[0] != "ed25519":
        raise IdentityError(
            f"{path} must hold 'ed25519 <version> <base64 seed>'",
            "point signing_key_path at this server's signing key file",
        )
    return f"ed25519:{fields[1]}"


def write_signing_key(path: Path, key: ServerSigningKey) -> None:
    """Replace the key file atomically (used by key rotation)."""
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    write_private_file(temporary, format_signing_key(key).encode())
    os.replace(temporary, path)


# How often current_signing_key() looks at the file again.
SIGNING_KEY_CHECK_INTERVAL = 1.0


@dataclass
class _LoadedKey:
    key: ServerSigningKey
    identity: tuple[int, int]  # (inode, mtime_ns): os.replace always changes the inode
    checked_at: float


_loaded_keys: dict[Path, _LoadedKey] = {}
_loaded_keys_lock = threading.Lock()


def current_signing_key(
    path: Path, max_age: float = SIGNING_KEY_CHECK_INTERVAL
) -> ServerSigningKey:
    """The key in the signing key file, re-read once the file has been replaced.

    The file is looked at no more than once per ``max_age`` seconds, so
    processes pick up a rotated key (``mxfed keys rotate``) within about a
    second without a restart; ``max_age=0`` looks now. Creates the file when
    it does not exist yet.
    """
    now = time.monotonic()
    with _loaded_keys_lock:
        loaded = _loaded_keys.get(path)
        if loaded is not None and now - loaded.checked_at < max_age:
            return loaded.key
        try:
            stat = path.stat()
        except FileNotFoundError:
            if loaded is not None:  # being replaced right now; keep the key we have
                return loaded.key
            key = load_or_create_signing_key(path)
            stat = path.stat()
            loaded = _LoadedKey(key, (stat.st_ino, stat.st_mtime_ns), now)
            _loaded_keys[path] = loaded
            return key
        identity = (stat.st_ino, stat.st_mtime_ns)
        if loaded is None or loaded.identity != identity:
            loaded = _LoadedKey(parse_signing_key(path.read_text()), identity, now)
            _loaded_keys[path] = loaded
        else:
            loaded.checked_at = now
        return loaded.key


def ensure_tls_pair(certificate: Path, private_key: Path, server_name: str) -> bool:
    """Write a self-signed pair for the server's hostname when absent; True if created."""
    if certificate.exists() and private_key.exists():
        return False
    # Imported here: only the first run needs it, and it costs every process ~14 MiB.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = server_name.rsplit(":", 1)[0] if not server_name.endswith("]") else server_name
    host = host.strip("[]")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName]
    try:
        names = [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        names = [x509.DNSName(host)]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if write_private_file(private_key, key_pem):
        certificate.parent.mkdir(parents=True, exist_ok=True)
        certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return True
    return False


def main(argv: list[str]) -> int:
    """``python -m mxfed.identity_files CERT KEY SERVER_NAME``: make the TLS pair.

    The supervisor runs this as a short-lived process so that no resident
    process keeps the crypto library loaded just for a first start.
    """
    certificate, private_key, server_name = argv
    ensure_tls_pair(Path(certificate), Path(private_key), server_name)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
