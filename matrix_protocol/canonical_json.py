"""Canonical JSON encoding plus the plain JSON helpers used on the wire.

Spec: https://spec.matrix.org/v1.19/appendices/#canonical-json
Canonical JSON is
the spec's reference encoding
``json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)``
as UTF-8, restricted to integers in ±(2**53-1) and no floats.

orjson with ``OPT_SORT_KEYS | OPT_STRICT_INTEGER`` produces the very same
bytes for every value that passes :func:`validate_canonical_json`: it sorts
keys by their UTF-8 bytes, which is the same order as Unicode code points, it
writes non-ASCII (including U+2028/U+2029 and U+007F) raw and escapes control
characters exactly like :mod:`json`. The tests check this against the
reference encoder and PyPI ``canonicaljson``. orjson itself is about ten
times faster than :mod:`json`; with the Python-level validation in front a
typical PDU still encodes about 1.8 times as fast as with ``canonicaljson``,
which matters because every received PDU is encoded at least twice (content
hash and signature check).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1

_CANONICAL_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


class CanonicalJsonError(ValueError):
    """The value cannot be encoded as canonical JSON.

    ``path`` lists the keys/indices leading from the top-level value to the
    offending one.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []

    def __str__(self) -> str:
        if not self.path:
            return self.reason
        return self.reason + " at " + "".join(f"[{step!r}]" for step in self.path)


class _LooseNumberError(CanonicalJsonError):
    """A float or an out-of-range int: fatal when strict, tolerated for v1–v5 rooms."""


def _check_string(value: str) -> None:
    # isascii() is O(1) in CPython, so only non-ASCII strings pay for the
    # encode; a lone surrogate has no UTF-8 form and so no canonical encoding.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CanonicalJsonError("string contains a lone surrogate") from None


def _check_scalar(value: Any, loose_numbers: bool) -> None:
    if isinstance(value, str):
        _check_string(value)
    elif value is None or isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not loose_numbers and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _LooseNumberError(f"integer {value} is outside ±(2**53-1)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJsonError(f"{value} is not a JSON number")
        if not loose_numbers:
            raise _LooseNumberError(f"float {value!r} is not allowed")
    else:
        raise CanonicalJsonError(f"{type(value).__name__} is not a JSON type")


def _walk(value: Any, loose_numbers: bool) -> None:
    if isinstance(value, dict):
        for key in value:
            if type(key) is not str or not key.isascii():
                try:
                    if not isinstance(key, str):
                        raise CanonicalJsonError(f"object key {key!r} is not a string")
                    _check_string(key)
                except CanonicalJsonError as exc:
                    exc.path.insert(0, key)
                    raise
        children: Iterable[tuple[str | int, Any]] = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        _check_scalar(value, loose_numbers)
        return
    for step, item in children:
        # Validation costs more than orjson's encoding, so the common exact
        # types are checked inline here rather than by a call per value. The
        # path is only built while an error unwinds (try is free in 3.11+).
        try:
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    _check_string(item)
            elif kind is int:
                if not loose_numbers and not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    raise _LooseNumberError(f"integer {item} is outside ±(2**53-1)")
            elif item is not None and kind is not bool:
                _walk(item, loose_numbers)
        except CanonicalJsonError as exc:
            exc.path.insert(0, step)
            raise


def _checked_walk(value: Any, loose_numbers: bool) -> None:
    try:
        _walk(value, loose_numbers)
    except RecursionError:
        raise CanonicalJsonError("value is nested too deeply") from None


def validate_canonical_json(value: Any) -> None:
    """Raise :class:`CanonicalJsonError` unless ``value`` has a canonical encoding.

    Allowed: ``dict`` with ``str`` keys, ``list``, ``str`` (no lone
    surrogates), ``bool``, ``None`` and ``int`` within ±(2**53-1). Floats are
    rejected even when integral (``1.0``), as are NaN and the infinities.
    """
    _checked_walk(value, loose_numbers=False)


def _encode_reference(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        )
    except RecursionError:
        raise CanonicalJsonError("value is nested too deeply") from None
    return text.encode("utf-8")


def encode_canonical_json(value: Any, *, strict: bool = True) -> bytes:
    """The canonical JSON bytes of ``value``.

    ``strict=True`` (room v6+, requests, keys) first runs
    :func:`validate_canonical_json`. ``strict=False`` is for room v1–v5
    events, which may contain floats and integers beyond ±(2**53-1): those
    are encoded exactly as the spec's Python reference encoder does (floats
    as Python's ``repr``), since that is what other servers hashed and
    signed. Even then NaN, infinities, non-string keys, lone surrogates and
    non-JSON types raise :class:`CanonicalJsonError`.
    """
    try:
        _checked_walk(value, loose_numbers=False)
    except _LooseNumberError:
        if strict:
            raise
        # orjson writes floats differently from repr() and cannot do big
        # ints, so loose numbers take the reference encoder.
        _checked_walk(value, loose_numbers=True)
        return _encode_reference(value)
    try:
        return orjson.dumps(value, option=_CANONICAL_OPTIONS)
    except orjson.JSONEncodeError:
        # Validated values only fail in orjson by nesting deeper than its
        # fixed limit of 255 levels; json only stops at Python's recursion limit.
        return _encode_reference(value)


def encode_validated_canonical_json(value: Any) -> bytes:
    """:func:`encode_canonical_json` of a value known to pass :func:`validate_canonical_json`.

    For parts of a PDU already validated strictly (room v6+): the event ID,
    content hash and size check of one PDU would otherwise walk it once each,
    and the walk costs more than the encoding. Values made only of parts of
    a validated value (its redacted copy, the keys a hash covers) qualify.
    """
    try:
        return orjson.dumps(value, option=_CANONICAL_OPTIONS)
    except orjson.JSONEncodeError:
        # Nested deeper than orjson's limit (as in encode_canonical_json).
        return _encode_reference(value)


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON for the wire (key order unspecified).

    Falls back to :mod:`json` for integers orjson cannot represent (beyond
    64 bits, found in old rooms). NaN and infinities come out as ``null``
    from orjson; callers must not send such floats.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
            "utf-8"
        )


# orjson turns integers outside the 64-bit range into floats, silently losing
# digits that old rooms' hashes depend on. Such integers need at least 19
# digits, so a run of 19 digits anywhere (even inside a string; a false
# positive only costs speed) sends the document to the exact stdlib parser.
# Found as 19 zeros once every digit reads "0": a substring search over the
# translated copy costs a seventh of a regex search (which cost as much as
# orjson's parse of the document).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(data: bytes | str) -> Any:
    """Parse JSON; raises :class:`ValueError` (``json.JSONDecodeError``) on bad input.

    ``NaN``/``Infinity`` literals are rejected. Duplicate keys are not: the
    last one wins, as in every common JSON parser. Integers of any size are
    kept exact.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_AS_ZERO):
        return orjson.loads(raw)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        # orjson refuses deep nesting with a JSONDecodeError; json hits the
        # interpreter's recursion limit instead. Bad input either way.
        raise ValueError("JSON is nested too deeply") from None
