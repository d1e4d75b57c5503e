"""Builds the outbound federation client from mxfed's configuration.

Every service that calls other servers gets the same options and signs with
the current key of the shared signing key file (re-read after a rotation).
"""

from __future__ import annotations

from typing import Any

import nacl.signing

from mxfed.config import Config
from mxfed.federation_client.client import FederationClient, OutboundOptions
from mxfed.identity_files import current_signing_key


def outbound_options(config: Config) -> OutboundOptions:
    return OutboundOptions(
        verify_tls=config.federation_verify_tls,
        ca_file=str(config.federation_ca_file) if config.federation_ca_file else None,
        client_cert=(
            (str(config.tls_certificate), str(config.tls_private_key))
            if config.federation_client_certificate
            else None
        ),
        blocked_ip_ranges=list(config.federation_blocked_ip_ranges),
        allowed_ip_ranges=list(config.federation_allowed_ip_ranges),
        request_timeout=config.federation_request_timeout,
        connect_timeout=config.federation_connect_timeout,
    )


def federation_client_from_config(config: Config, **kwargs: Any) -> FederationClient:
    """A client signing as ``config.server_name`` with the current signing key."""

    def current_key() -> tuple[nacl.signing.SigningKey, str]:
        key = current_signing_key(config.signing_key)
        return key.signing_key, key.key_id

    signing_key, key_id = current_key()
    return FederationClient(
        config.server_name,
        signing_key,
        key_id,
        outbound_options(config),
        key_provider=current_key,
        **kwargs,
    )
