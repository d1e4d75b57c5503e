"""Builds the events service inside the common service runtime."""

from __future__ import annotations

from mxfed.federation_client.from_config import federation_client_from_config
from mxfed.service_runtime import ServiceContext
from mxfed.verify_key_cache import VerifyKeyCache
from mxfed_api.backfill.v1 import backfill_pb2_grpc
from mxfed_api.events.v1 import events_pb2_grpc
from services.events.admin.servicer import setup_admin
from services.events.cache import LruCache
from services.events.directory.servicer import add_directory_servicer
from services.events.history.servicer import add_history_servicer
from services.events.input import InputPipeline
from services.events.keys_client import KeysClient
from services.events.local_events import LocalEvents
from services.events.membership.servicer import setup_membership
from services.events.policy import PolicyServers
from services.events.reads import Reads
from services.events.room_batch import RoomsCore
from services.events.servicer import EventsServicer
from services.events.state import StateResolver
from services.events.state_storage import StateStore
from services.events.streams import StreamHub, StreamPositions
from services.events.third_party.servicer import setup_third_party

EVENT_CACHE_SIZE = 50_000


def build_core(context: ServiceContext) -> RoomsCore:
    return RoomsCore(
        server_name=context.config.server_name,
        state_store=StateStore(context.pool),
        resolver=StateResolver(),
        event_cache=LruCache("events_events", EVENT_CACHE_SIZE),
        stream_positions=StreamPositions(context.pool, context.config.database_url),
    )


def build_servicer(context: ServiceContext) -> EventsServicer:
    """The servicer and its background tasks (stream hub, stream-position sweep, typing
    expiry)."""
    core = build_core(context)
    keys = KeysClient(context.channel("keys"), VerifyKeyCache("events_verify_keys"))
    backfill = backfill_pb2_grpc.BackfillStub(context.channel("backfill"))
    client = federation_client_from_config(context.config)
    context.on_stop(client.close)
    policy = PolicyServers(
        context.pool, core.server_name, client, context.config.policy_server_timeout
    )
    pipeline = InputPipeline(context.pool, core, keys, backfill=backfill, policy=policy)
    local = LocalEvents(context.pool, core, context.signing_key, policy)
    reads = Reads(context.pool, core.state_store, core.server_name)
    hub = StreamHub(context.pool, core.server_name)
    context.spawn(hub.run, name="events-stream-hub")
    context.spawn(core.stream_positions.run_sweeper, name="events-stream-positions-sweep")
    context.on_stop(core.stream_positions.close)
    context.spawn(pipeline.run_typing_expiry, name="events-typing-expiry")
    context.on_stop(pipeline.guard.close)
    return EventsServicer(pipeline, local, reads, hub)


async def setup(context: ServiceContext) -> None:
    """Register the events servicer on ``context.server``."""
    servicer = build_servicer(context)
    events_pb2_grpc.add_EventsServicer_to_server(servicer, context.server)
    add_history_servicer(context.server, context.pool, servicer.reads)
    add_directory_servicer(context)
    await setup_membership(context, servicer.local)
    await setup_third_party(context, servicer.local)
    await setup_admin(context, servicer.local)
