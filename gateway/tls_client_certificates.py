"""Hands the TLS client certificate to the app, for the optional origin check.

The spec lets a receiving server check that a client certificate presented
by the caller belongs to the X-Matrix origin
(https://spec.matrix.org/v1.19/server-server-api/#client-tls-certificates). uvicorn neither
asks for client certificates nor exposes them, so with
``require_tls_client_certificate_match`` on, the gateway asks for one
(CERT_OPTIONAL, verified against ``tls_client_ca_file`` or the system's
CAs) and this protocol puts it into the standard ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``), where
``gateway.xmatrix_auth`` reads it.
"""

from __future__ import annotations

import ssl

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class ClientCertificateHttpProtocol(HttpToolsProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        ssl_object = self.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
        self.scope["extensions"] = {"tls": {"client_cert_chain": chain}}


def client_certificate_options(ca_file: str | None) -> dict[str, object]:
    """uvicorn options that make the TLS handshake ask for a client certificate."""
    if ca_file is None:
        ca_file = ssl.get_default_verify_paths().cafile or None
    return {
        "http": ClientCertificateHttpProtocol,
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_ca_certs": ca_file,
    }
