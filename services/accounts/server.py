"""Builds the Accounts service inside the common service runtime: in its own process
(``mxfed run --service accounts``, ``accounts_in_keys`` off), or in the keys process
(``accounts_in_keys`` on, the default: one process fewer on a small server)."""

from __future__ import annotations

from mxfed.database import apply_migrations
from mxfed.federation_client.from_config import federation_client_from_config
from mxfed.service_runtime import ServiceContext, migrations_directory
from mxfed_api.accounts.v1 import accounts_pb2_grpc
from services.accounts.joins import JoinDeviceLists
from services.accounts.local import LocalAccounts
from services.accounts.notify import GrpcEduNotifier
from services.accounts.presence import RemotePresence
from services.accounts.remote import RemoteDeviceLists
from services.accounts.servicer import AccountsServicer
from services.accounts.to_device import ToDeviceHub, ToDeviceInbox

# Schemas whose migrations the runtime applies before this service's own: the first
# accounts migration moves the tables keys migrations 100-102 made, so an accounts
# process started on a fresh database before any keys process migrates them first.
MIGRATES_AFTER = ("keys",)


async def setup(context: ServiceContext) -> AccountsServicer:
    """Register Accounts on ``context.server``, with its federation client and EDU
    notifier, and start following local joins for their device lists (``joins.py``).

    Run as its own part, the runtime has applied the ``accounts`` schema's migrations.
    Hosted, the keys process calls this from its own ``setup`` (after applying its own
    migrations) and the ``accounts`` ones are applied here first.
    """
    if context.name != "accounts":
        await apply_migrations(context.pool, "accounts", migrations_directory("accounts"))
    client = federation_client_from_config(context.config)
    notifier = GrpcEduNotifier(context.channel("events"), context.channel("sender"))
    local = LocalAccounts(context.pool, context.config.server_name, notifier)
    remote = RemoteDeviceLists(context.pool, context.config.server_name, client)
    hub = ToDeviceHub(context.pool)
    context.on_stop(client.close)
    context.on_stop(remote.close)
    context.on_stop(hub.close)
    servicer = AccountsServicer(
        local,
        remote,
        ToDeviceInbox(context.pool, context.config.server_name),
        hub,
        RemotePresence(
            context.pool, context.config.server_name, enabled=context.config.presence_enabled
        ),
    )
    accounts_pb2_grpc.add_AccountsServicer_to_server(servicer, context.server)
    if context.config.database_url:
        joins = JoinDeviceLists(
            context.config.database_url, local, context.channel("events"), context.channel("sender")
        )
        context.spawn(joins.run, f"{context.name}:device-list-joins")
    return servicer
