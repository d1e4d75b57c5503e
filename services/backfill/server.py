"""Builds the backfill service inside the common service runtime."""

from __future__ import annotations

from mxfed.federation_client.from_config import federation_client_from_config
from mxfed.service_runtime import ServiceContext
from mxfed_api.backfill.v1 import backfill_pb2_grpc
from mxfed_api.events.v1 import events_pb2_grpc, history_pb2_grpc
from services.backfill.fetching import Fetcher
from services.backfill.servicer import BackfillServicer
from services.backfill.serving import Serving
from services.backfill.storage import BackfillStore


async def setup(context: ServiceContext) -> None:
    """Register the backfill servicer on ``context.server``."""
    events = events_pb2_grpc.EventsStub(context.channel("events"))
    history = history_pb2_grpc.HistoryStub(context.channel("events"))
    client = federation_client_from_config(context.config)
    context.on_stop(client.close)
    fetcher = Fetcher(
        context.config.server_name, client, events, history, BackfillStore(context.pool)
    )
    backfill_pb2_grpc.add_BackfillServicer_to_server(
        BackfillServicer(Serving(events, history), fetcher), context.server
    )
