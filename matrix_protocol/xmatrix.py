"""The ``Authorization: X-Matrix`` request signature.

Spec: https://spec.matrix.org/v1.19/server-server-api/#request-authentication
(the signed JSON object, the header grammar (RFC 9110 auth-params) and the
compatibility rules for senders and receivers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.signing

from matrix_protocol.canonical_json import CanonicalJsonError
from matrix_protocol.signing import (
    SignatureError,
    sign_json,
    signing_payload,
    verify_json_signature,
    verify_signed_payload,
)

_SCHEME = re.compile(r"x-matrix[ \t]+", re.IGNORECASE)
_OWS = " \t"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Receivers also accept unquoted values containing ':' because old servers
# sent e.g. origin=example.org:8448 unquoted; brackets cover IPv6 origins.
_UNQUOTED_VALUE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z:\[\]]+")
# Senders write values quoted without escapes (sender compatibility rule),
# so these cannot be represented; control characters would break the header.
_UNSENDABLE = re.compile(r'["\\\x00-\x1f\x7f]')
_KNOWN_PARAMS = frozenset({"origin", "destination", "key", "sig"})


@dataclass(frozen=True)
class XMatrixCredentials:
    origin: str
    key: str
    sig: str
    destination: str | None = None


class XMatrixParseError(ValueError):
    """The header is not a well-formed X-Matrix credential."""


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string whose opening quote is just before ``pos``."""
    chars: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        chars.append(char)
        pos += 1
    raise XMatrixParseError("unterminated quoted string")


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    pos = 0
    while True:
        pos = _skip_ows(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1  # RFC 9110 §5.6.1: empty list elements are allowed
            continue
        if pos == len(text):
            return params
        name_match = _TOKEN.match(text, pos)
        if name_match is None:
            raise XMatrixParseError(f"expected a parameter name at offset {pos}")
        name = name_match.group().lower()
        pos = _skip_ows(text, name_match.end())
        if pos == len(text) or text[pos] != "=":
            raise XMatrixParseError(f"expected '=' after parameter {name!r}")
        pos = _skip_ows(text, pos + 1)
        if pos < len(text) and text[pos] == '"':
            value, pos = _parse_quoted(text, pos + 1)
        else:
            value_match = _UNQUOTED_VALUE.match(text, pos)
            if value_match is None:
                raise XMatrixParseError(f"missing value for parameter {name!r}")
            value, pos = value_match.group(), value_match.end()
        if name == "signature":  # the spec's parameter list uses this name
            name = "sig"
        if name in _KNOWN_PARAMS:
            # Two different values for one parameter would let the checker
            # and the verifier disagree on which one counts.
            if name in params:
                raise XMatrixParseError(f"duplicate parameter {name!r}")
            params[name] = value
        pos = _skip_ows(text, pos)
        if pos < len(text) and text[pos] != ",":
            raise XMatrixParseError(f"expected ',' at offset {pos}")


def parse_xmatrix_header(value: str) -> XMatrixCredentials:
    """Parse one ``Authorization`` header value; raises :class:`XMatrixParseError`.

    Scheme and parameter names are case-insensitive, values may be tokens or
    quoted strings, unknown parameters are ignored and ``signature`` is
    accepted for ``sig``. ``origin``, ``key`` and ``sig`` are required and
    must not be empty; ``destination`` is optional (old senders omit it).
    """
    scheme = _SCHEME.match(value.strip(_OWS))
    if scheme is None:
        raise XMatrixParseError("not an X-Matrix authorization header")
    params = _parse_params(scheme.string[scheme.end() :])
    for required in ("origin", "key", "sig"):
        if not params.get(required):
            raise XMatrixParseError(f"missing or empty {required!r} parameter")
    destination = params.get("destination")
    if destination == "":
        raise XMatrixParseError("empty 'destination' parameter")
    return XMatrixCredentials(
        origin=params["origin"], key=params["key"], sig=params["sig"], destination=destination
    )


def format_xmatrix_header(credentials: XMatrixCredentials) -> str:
    """The header value in the form every receiver understands.

    Raises :class:`ValueError` for values containing ``"``, ``\\`` or
    control characters, which that form cannot carry.
    """
    params = [("origin", credentials.origin)]
    if credentials.destination is not None:
        params.append(("destination", credentials.destination))
    params += [("key", credentials.key), ("sig", credentials.sig)]
    for name, param_value in params:
        if _UNSENDABLE.search(param_value):
            raise ValueError(f"X-Matrix {name} cannot contain quotes, backslashes or controls")
    return "X-Matrix " + ",".join(f'{name}="{param_value}"' for name, param_value in params)


def request_signing_object(
    method: str, uri: str, origin: str, destination: str, content: Any = None
) -> dict[str, Any]:
    """The JSON object a request signature covers.

    ``uri`` is the raw request target from ``/_matrix`` on, query string
    included, exactly as on the request line. ``content`` is the parsed body;
    pass ``None`` for requests without a body (the key is then absent).
    """
    obj: dict[str, Any] = {
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: Any,
    signing_key: nacl.signing.SigningKey,
    key_id: str,
) -> str:
    """The ``Authorization`` header value for an outgoing request.

    ``origin`` and ``destination`` are server names before any delegation.
    """
    signed = sign_json(
        request_signing_object(method, uri, origin, destination, content),
        signing_key,
        origin,
        key_id,
    )
    return format_xmatrix_header(
        XMatrixCredentials(
            origin=origin,
            key=key_id,
            sig=signed["signatures"][origin][key_id],
            destination=destination,
        )
    )


def verify_request(
    credentials: XMatrixCredentials,
    method: str,
    uri: str,
    destination: str,
    content: Any,
    verify_key: nacl.signing.VerifyKey,
) -> None:
    """Check a received request's signature; raises :class:`SignatureError`.

    ``destination`` is our own server name: it is signed over even when the
    header omitted it, and a header naming another destination is refused.
    ``verify_key`` must be ``credentials.origin``'s current key
    ``credentials.key`` (never an old key: those only verify events).
    """
    if credentials.destination is not None and credentials.destination != destination:
        raise SignatureError(f"request is for {credentials.destination!r}, we are {destination!r}")
    obj = request_signing_object(method, uri, credentials.origin, destination, content)
    obj["signatures"] = {credentials.origin: {credentials.key: credentials.sig}}
    verify_json_signature(obj, credentials.origin, credentials.key, verify_key)


def verify_request_credentials(
    credentials: Sequence[XMatrixCredentials],
    method: str,
    uri: str,
    destination: str,
    content: Any,
    verify_keys: Mapping[str, nacl.signing.VerifyKey],
) -> None:
    """Check every X-Matrix credential of a received request; raises :class:`SignatureError`.

    All ``credentials`` are of one origin; ``verify_keys`` are that origin's current
    keys valid now, by key ID. Each credential made with one of them must verify and
    there must be one; the others (keys we do not know) are ignored. The signed
    object is encoded once for them all: the sender chooses how many headers it
    sends, and the body may be megabytes.
    """
    if not credentials:
        raise SignatureError("no signature")
    usable = [credential for credential in credentials if credential.key in verify_keys]
    if not usable:
        key_ids = ", ".join(credential.key for credential in credentials)
        raise SignatureError(f"no current key of {credentials[0].origin} among {key_ids}")
    for credential in usable:
        if credential.destination is not None and credential.destination != destination:
            raise SignatureError(
                f"request is for {credential.destination!r}, we are {destination!r}"
            )
    origin = usable[0].origin
    try:
        payload = signing_payload(request_signing_object(method, uri, origin, destination, content))
    except CanonicalJsonError as exc:
        raise SignatureError(f"signed object has no canonical form: {exc}") from exc
    for credential in usable:
        verify_signed_payload(
            payload,
            origin,
            {credential.key: credential.sig},
            {credential.key: verify_keys[credential.key]},
        )
