"""Builds the keys service inside the common service runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypedDict, Unpack

from mxfed.config import Config
from mxfed.federation_client import FederationClient
from mxfed.federation_client.from_config import federation_client_from_config, outbound_options
from mxfed.service_runtime import ServiceContext
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.accounts.server import setup as setup_accounts
from services.keys.doctor.diagnosis import FederationDoctor
from services.keys.doctor.servicer import DoctorRpc
from services.keys.doctor.sources import GrpcDeliveryStates, GrpcRoomAccessChecks
from services.keys.keyring import Keyring, Notary
from services.keys.own_keys import OwnKeys
from services.keys.servicer import KeysServicer
from services.keys.storage import KeysStorage

log = logging.getLogger(__name__)


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


class KeyringOptions(TypedDict, total=False):
    """The keyword-only tuning options of :class:`Keyring`."""

    clock: Callable[[], int]
    fetch_timeout: float
    min_backoff: float
    max_backoff: float
    refetch_interval: float
    max_servers: int
    fetch_rate: float
    fetch_burst: int
    monotonic: Callable[[], float]


def build_keyring(
    config: Config,
    storage: KeysStorage,
    client: FederationClient,
    **options: Unpack[KeyringOptions],
) -> tuple[Keyring, OwnKeys]:
    own_keys = OwnKeys(config, storage)
    options.setdefault("max_servers", config.keys_max_cached_servers)
    options.setdefault("fetch_rate", config.keys_fetch_rate)
    options.setdefault("fetch_burst", config.keys_fetch_burst)
    return Keyring(storage, own_keys, client, notaries(config), **options), own_keys


def build_doctor(context: ServiceContext, own_keys: OwnKeys) -> FederationDoctor:
    """``mxfed doctor``'s checks, asking the sender and events services over gRPC."""
    config = context.config
    return FederationDoctor(
        config,
        own_keys,
        outbound_options(config),
        GrpcDeliveryStates(context.channel("sender")),
        GrpcRoomAccessChecks(context.channel("events")),
        notaries(config),
    )


async def setup(context: ServiceContext) -> None:
    """Register the keys servicer on ``context.server``, and Accounts when this process
    hosts it (``accounts_in_keys``)."""
    config = context.config
    storage = KeysStorage(context.pool)
    client = federation_client_from_config(config)
    context.on_stop(client.close)
    keyring, own_keys = build_keyring(config, storage, client)
    doctor = build_doctor(context, own_keys)
    keys_pb2_grpc.add_KeysServicer_to_server(
        KeysServicer(keyring, own_keys, DoctorRpc(doctor)), context.server
    )
    # Small deployments: the keys process hosts the Accounts service (services/accounts/).
    if config.accounts_in_keys:
        await setup_accounts(context)
