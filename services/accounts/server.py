"""Builds the Accounts service inside the common service runtime (today: the keys process)."""

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


async def setup(context: ServiceContext) -> AccountsServicer:
    """Register Accounts on ``context.server``, with its federation client and EDU
    notifier, and start following local joins for their device lists (``joins.py``).

    The keys process calls this from its own ``setup``: it hosts Accounts. The
    ``accounts`` schema's migrations are applied first (the process has applied
    its own already).
    """
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
        context.spawn(joins.run, "keys:device-list-joins")
    return servicer
