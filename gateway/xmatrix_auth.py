"""X-Matrix request authentication, as a FastAPI dependency.

Spec: https://spec.matrix.org/v1.19/server-server-api/#request-authentication
Every endpoint that needs a signed request declares
``origin: str = Depends(require_origin)``; the handler then gets the verified
origin server name, and the parsed JSON body (``None`` without a body) on
``request.state.json_body`` so that it never parses the body again.

The signed object is rebuilt from the request target exactly as received
(``scope["raw_path"]`` and ``scope["query_string"]``, never the decoded
path), our own server name as ``destination``, and the body only when there
is one. The signatures of all ``X-Matrix`` headers are checked here when the
origin's keys they name are in the gateway's
:class:`~mxfed.verify_key_cache.VerifyKeyCache` (current and valid now), else
by the keys service in one ``VerifyRequest`` call (which finds or fetches the
keys), whose answer fills that cache: the usual request (one header) costs no
gRPC round trip.

A server the operator blocks (``mxfed servers block``) gets 403 ``M_FORBIDDEN``
before its signature is checked.

Errors follow Synapse: no header 401, an unparsable header 400, anything
that does not verify 401, all ``M_UNAUTHORIZED``; a body that is not JSON is
400 ``M_NOT_JSON``. A keys service that cannot be reached is a 502 from the
common gRPC error handler.

TLS client certificates (``require_tls_client_certificate_match``): when on,
the request must come with a client certificate valid for the origin's host
(subjectAltName DNS name or IP address). The certificate is read from the
ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``),
which the gateway's uvicorn protocol fills in when the option is on
(``gateway.tls_client_certificates``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from gateway.errors import MatrixError
from matrix_protocol.canonical_json import decode_json
from matrix_protocol.server_names import is_ip_literal, is_valid_server_name, parse_server_name
from matrix_protocol.signing import SignatureError
from matrix_protocol.xmatrix import (
    XMatrixCredentials,
    XMatrixParseError,
    parse_xmatrix_header,
    verify_request_credentials,
)
from mxfed.clock import now_ms
from mxfed.server_policy import SERVER_POLICY
from mxfed.verify_key_cache import VerifyKeyCache
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc

log = logging.getLogger(__name__)

_SCHEME = b"x-matrix"
_SEND_PREFIX = "/_matrix/federation/v1/send/"
# Requests with up to this many X-Matrix headers are verified here when their keys are
# cached (senders send one). The sender chooses how many it sends, each a verification
# over the whole body (up to body_limit.MAX_BODY_BYTES): more are the keys service's to
# check, off the loop that serves every request.
LOCAL_MAX_CREDENTIALS = 1


def unauthorized(error: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", error)


def _xmatrix_headers(request: Request) -> list[str]:
    values = []
    for name, value in request.scope["headers"]:
        if name == b"authorization" and value.lstrip(b" \t")[: len(_SCHEME)].lower() == _SCHEME:
            values.append(value.decode("latin-1"))
    return values


def raw_request_target(scope: Mapping[str, Any]) -> str:
    """Path and ``?query`` exactly as on the request line.

    Some ASGI servers put the query into ``raw_path`` too (httpx's test
    transport does); a raw path cannot contain ``?``, so it is cut there.
    """
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    path = raw_path.split(b"?", 1)[0]
    query = scope.get("query_string") or b""
    target = path + b"?" + query if query else path
    try:
        return target.decode("utf-8")
    except UnicodeDecodeError:
        raise unauthorized("request target is not UTF-8") from None


def client_certificate_matches(scope: Mapping[str, Any], origin: str) -> bool:
    """Whether the TLS client certificate (ASGI TLS extension) is for ``origin``'s host."""
    from cryptography import x509  # only with require_tls_client_certificate_match

    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return False
    host, _ = parse_server_name(origin)
    try:
        certificate = x509.load_pem_x509_certificate(chain[0].encode("ascii"))
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if is_ip_literal(host):
        address = ipaddress.ip_address(host.strip("[]"))
        return address in names.get_values_for_type(x509.IPAddress)
    wanted = host.lower()
    for name in names.get_values_for_type(x509.DNSName):
        name = name.lower()
        if name == wanted or (
            name.startswith("*.") and wanted.split(".", 1)[-1] == name[2:] and "." in wanted
        ):
            return True
    return False


def _credentials(request: Request) -> list[XMatrixCredentials]:
    headers = _xmatrix_headers(request)
    if not headers:
        raise unauthorized("Missing Authorization headers")
    try:
        return [parse_xmatrix_header(header) for header in headers]
    except XMatrixParseError as exc:
        raise MatrixError(400, "M_UNAUTHORIZED", f"Malformed Authorization header: {exc}") from None


async def require_origin(request: Request) -> str:
    """Verify the request's X-Matrix signature(s); return the origin server name."""
    config = request.app.state.config
    credentials = _credentials(request)
    origin = credentials[0].origin
    if any(credential.origin != origin for credential in credentials):
        raise unauthorized("Authorization headers name different origins")
    if any(
        credential.destination is not None and credential.destination != config.server_name
        for credential in credentials
    ):
        raise unauthorized("Request is not for this server")
    if not is_valid_server_name(origin):
        raise unauthorized("Origin is not a valid server name")
    if SERVER_POLICY.blocks(origin):
        # mxfed servers block: refused before its signature costs a key fetch.
        log.info("request from a blocked server", extra={"origin": origin})
        raise MatrixError(403, "M_FORBIDDEN", "Federation with this server is blocked")
    if config.require_tls_client_certificate_match and not client_certificate_matches(
        request.scope, origin
    ):
        raise unauthorized("TLS client certificate does not match the origin")

    body = await request.body()
    json_body: Any = None
    if body:
        try:
            json_body = decode_json(body)
        except ValueError:
            raise MatrixError(400, "M_NOT_JSON", "Content not JSON") from None
    request.state.json_body = json_body

    error = await _verify(request, credentials, body, json_body)
    if error is not None:
        log.info("x-matrix rejected", extra={"origin": origin, "error": error})
        raise unauthorized(f"Invalid signature: {error}")
    log.debug("x-matrix verified", extra={"origin": origin})
    request.app.state.services.server_up.seen(origin)
    if not request.url.path.startswith(_SEND_PREFIX):  # /send has its own one-at-a-time rule
        request.app.state.origin_limiter.enter(request.scope, origin)
    request.state.origin = origin
    return origin


async def _verify(
    request: Request, credentials: list[XMatrixCredentials], body: bytes, json_body: Any
) -> str | None:
    """``None`` when the request's signatures verify, else why not: here with cached
    keys, else by the keys service (its answer's keys cached)."""
    config = request.app.state.config
    origin = credentials[0].origin
    uri = raw_request_target(request.scope)
    cache: VerifyKeyCache = request.app.state.request_keys
    verify_keys = (
        cache.request_keys(origin, [c.key for c in credentials], now_ms())
        if len(credentials) <= LOCAL_MAX_CREDENTIALS
        else None
    )
    if verify_keys is not None:
        try:
            verify_request_credentials(
                credentials, request.method, uri, config.server_name, json_body, verify_keys
            )
        except SignatureError as exc:
            return str(exc)
        return None
    reply = await keys_pb2_grpc.KeysStub(request.app.state.services.channel("keys")).VerifyRequest(
        keys_pb2.VerifyRequestRequest(
            method=request.method,
            uri=uri,
            origin=origin,
            destination=config.server_name,
            content=body if body else None,
            signatures=[
                keys_pb2.RequestSignature(key_id=credential.key, sig=credential.sig)
                for credential in credentials
            ],
        )
    )
    if not reply.ok:
        return reply.error
    cache.add(reply.keys)
    return None
