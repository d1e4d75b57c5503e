"""Builds the keys service inside the common service runtime."""

from __future__ import annotations

import logging

from mxfed.config import Config
from mxfed.federation_client import FederationClient, OutboundOptions
from mxfed.service_runtime import ServiceContext
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.keys.keyring import Keyring, Notary
from services.keys.own_keys import OwnKeys
from services.keys.servicer import KeysServicer
from services.keys.storage import KeysStorage

log = logging.getLogger(__name__)


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


def notaries(config: Config) -> list[Notary]:
    """The trusted key servers we can check: one without a pinned key is skipped."""
    usable = []
    for trusted in config.trusted_key_servers:
        if trusted.verify_keys:
            usable.append(Notary.from_config(trusted))
        else:
            log.warning(
                "trusted key server has no pinned verify_keys; not using it",
                extra={"notary": trusted.server_name},
            )
    return usable


def build_keyring(
    config: Config, storage: KeysStorage, client: FederationClient, **options: float
) -> tuple[Keyring, OwnKeys]:
    own_keys = OwnKeys(config, storage)
    return Keyring(storage, own_keys, client, notaries(config), **options), own_keys


async def setup(context: ServiceContext) -> None:
    """Register the keys servicer on ``context.server``."""
    config = context.config
    storage = KeysStorage(context.pool)
    # Key requests are unsigned, so the client's key never goes stale after a rotation.
    client = FederationClient(
        config.server_name,
        context.signing_key.signing_key,
        context.signing_key.key_id,
        outbound_options(config),
    )
    context.on_stop(client.close)
    keyring, own_keys = build_keyring(config, storage, client)
    keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(keyring, own_keys), context.server)
