"""Private key files are created 0600 from their first byte, on rotation too."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mxfed.identity_files import (
    ensure_signing_key,
    ensure_tls_pair,
    load_or_create_signing_key,
    new_signing_key,
    parse_signing_key,
    write_signing_key,
)
from mxfed.internal_identity import OPERATOR
from mxfed.internal_pki import ensure


@pytest.fixture
def creations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every file created through os.open: (path, flags, mode); the umask lets anything through."""
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT:
            created.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    previous = os.umask(0)
    yield created
    os.umask(previous)


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_every_private_key_file_is_created_0600_and_exclusively(
    tmp_path: Path, creations: list[tuple[str, int, int]]
) -> None:
    signing = tmp_path / "signing.key"
    first = load_or_create_signing_key(signing)
    assert ensure_signing_key(signing) == first.key_id
    rotated = new_signing_key()
    write_signing_key(signing, rotated)  # what `mxfed keys rotate` does
    assert parse_signing_key(signing.read_text()).key_id == rotated.key_id
    ensure_tls_pair(tmp_path / "tls.crt", tmp_path / "tls.key", "example.org")
    ensure(tmp_path / "internal", tmp_path / "ca.crt", tmp_path / "ca.key", [OPERATOR], "CA")

    keys = [path for path, _, _ in creations if path.endswith((".key", ".tmp"))]
    # The signing key twice (first run, rotation's temporary file), TLS, CA and operator keys.
    assert len(keys) == 5, creations
    for path, flags, mode in creations:
        if path in keys:
            assert mode == 0o600 and flags & os.O_EXCL, (path, oct(mode))
    for path in (signing, tmp_path / "tls.key", tmp_path / "ca.key"):
        assert _private(path)
    assert _private(tmp_path / "internal" / "operator" / "tls.key")
    assert not list(tmp_path.glob("*.tmp"))
