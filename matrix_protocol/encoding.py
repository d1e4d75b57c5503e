"""Unpadded Base64 as used for every binary value in Matrix.

Spec: https://spec.matrix.org/v1.19/appendices/#unpadded-base64

Encoders never pad; decoders accept both padded and unpadded input, and both the standard
and the URL-safe alphabet (room v4+ event IDs use the URL-safe one).
"""

from __future__ import annotations

import base64
import binascii

# Decoding maps the URL-safe alphabet onto the standard one so a single strict
# (validate=True) decoder handles both.
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def encode_base64(data: bytes, *, urlsafe: bool = False) -> str:
    """Unpadded base64 of ``data``; ``urlsafe`` selects the RFC 4648 §5 alphabet."""
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_base64(s: str) -> bytes:
    """Decode padded or unpadded, standard or URL-safe base64.

    Raises :class:`ValueError` for characters outside both alphabets or an
    impossible length.
    """
    if not isinstance(s, str):
        # Values come from untrusted JSON; callers handle one exception type.
        raise ValueError(f"base64 value must be a string, not {type(s).__name__}")  # noqa: TRY004
    unpadded = s.rstrip("=").translate(_URLSAFE_TO_STANDARD)
    try:
        return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64: {s!r}") from exc
