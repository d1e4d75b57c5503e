"""Builds the sender service inside the common service runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Sequence

import asyncpg
import nacl.signing

from mxfed.clock import now_ms
from mxfed.config import Config
from mxfed.federation_client import FederationClient
from mxfed.federation_client.from_config import outbound_options
from mxfed.held_connection import Backoff, log_failure
from mxfed.identity_files import current_signing_key
from mxfed.service_runtime import ServiceContext
from mxfed.waits import event_set_within
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2_grpc
from services.sender import metrics
from services.sender.backoff import BackoffPolicy
from services.sender.delivery import DeliveryManager, DeliveryOptions, FederationTransport
from services.sender.ingest import Ingester
from services.sender.leases import Membership
from services.sender.queues import EduQueuer, ServersInRoom
from services.sender.servicer import SenderServicer
from services.sender.storage import WAKE_CHANNEL, SenderStorage, ping

log = logging.getLogger(__name__)

STATS_INTERVAL = 15.0
TOP_DESTINATIONS = 10
TOP_EVERY = 4  # stats refreshes


def federation_client(config: Config) -> FederationClient:
    """The outbound client, signing with the current key (re-read after a rotation).

    Retries within one request are few: the per-destination backoff (and
    PerformServerUp) does the waiting, without holding a request slot.
    """

    def current_key() -> tuple[nacl.signing.SigningKey, str]:
        key = current_signing_key(config.signing_key)
        return key.signing_key, key.key_id

    signing_key, key_id = current_key()
    options = dataclasses.replace(
        outbound_options(config), max_retries=1, max_connections_per_host=2
    )
    return FederationClient(
        config.server_name, signing_key, key_id, options, key_provider=current_key
    )


def backoff_policy(config: Config) -> BackoffPolicy:
    return BackoffPolicy(
        min_interval_ms=int(config.sender_min_retry_interval * 1000),
        max_interval_ms=int(config.sender_max_retry_interval * 1000),
    )


async def listen_for_wakes(database_url: str, manager: DeliveryManager) -> None:
    """Follow NOTIFYs of queued work (from any replica) and wake the right workers.

    A lost connection is noticed at once (its termination listener) and
    opened again with a capped backoff; every new connection wakes every
    worker, for whatever was queued while nobody listened.
    """

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        manager.wake(None if payload == "*" else payload.split("\n"))

    lost = asyncio.Event()
    backoff = Backoff(0.2, 2.0)
    while True:
        connection: asyncpg.Connection | None = None
        lost.clear()
        try:
            connection = await asyncpg.connect(database_url, timeout=10)
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(WAKE_CHANNEL, on_notify)
            manager.wake(None)  # anything queued while we were not listening
            backoff.reset()
            while not connection.is_closed():
                await event_set_within(lost, 5)
                if not connection.is_closed():
                    await ping(connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("wake listener failed; reconnecting", extra={"error": str(exc)})
        finally:
            if connection is not None:
                connection.terminate()
        await backoff.wait()


async def refresh_stats(storage: SenderStorage) -> None:
    shown: set[str] = set()
    runs = 0
    while True:
        try:
            # The longest queues need a count over every queued row: every
            # TOP_EVERY-th refresh only (the totals are cheaper).
            with_top = runs % TOP_EVERY == 0
            runs += 1
            stats = await storage.stats(TOP_DESTINATIONS, with_top=with_top)
            metrics.QUEUED_PDUS.set(stats.pending_pdus)
            metrics.QUEUED_EDUS.set(stats.pending_edus)
            metrics.DESTINATIONS_PENDING.set(stats.destinations_pending)
            metrics.DESTINATIONS_BACKED_OFF.set(stats.destinations_backed_off)
            metrics.OLDEST_QUEUED_AGE.set(
                max(0.0, (now_ms() - stats.oldest_queued_ts) / 1000)
                if stats.oldest_queued_ts
                else 0
            )
            if with_top:
                top = dict(stats.top)
                for destination in shown - set(top):
                    metrics.TOP_QUEUE_DEPTH.remove(destination)
                for destination, depth in top.items():
                    metrics.TOP_QUEUE_DEPTH.labels(destination).set(depth)
                shown = set(top)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_failure(log, "queue statistics failed", exc)
        await asyncio.sleep(STATS_INTERVAL)


def servers_in_room_via(events: events_pb2_grpc.EventsStub) -> ServersInRoom:
    async def servers_in_room(room_id: str) -> Sequence[str]:
        # wait_for_ready: just after start the channel to the events service
        # is still connecting; wait for it (within the timeout) rather than
        # failing at once with UNAVAILABLE.
        reply = await events.QueryServersInRoom(
            events_pb2.QueryServersInRoomRequest(room_id=room_id),
            timeout=30,
            wait_for_ready=True,
        )
        return list(reply.servers)

    return servers_in_room


def replica_name(config: Config, instance_id: str) -> str:
    """``instance_name``, else the host name and the sender's gRPC port (what stays the
    same when this replica restarts, and differs between replicas on one host); a
    replica on a port picked at start has no name but its ``instance_id``."""
    if config.instance_name:
        return config.instance_name
    port = config.listen_address("sender").rpartition(":")[2]
    if port in ("", "0"):
        return instance_id
    return f"{socket.gethostname()}:{port}"


async def setup(context: ServiceContext) -> None:
    """Register the sender servicer and start ingest, delivery and housekeeping."""
    config = context.config
    assert config.database_url is not None
    storage = SenderStorage(context.pool)
    events = events_pb2_grpc.EventsStub(context.channel("events"))
    transport = FederationTransport(config.server_name, federation_client(config))
    membership = Membership(storage, context.instance_id, lease_seconds=config.sender_lease_seconds)
    manager = DeliveryManager(
        storage,
        membership,
        transport,
        backoff_policy(config),
        DeliveryOptions(
            catch_up_backlog=config.sender_catch_up_max_pdus,
            catch_up_per_room=config.sender_catch_up_events_per_room,
        ),
    )
    ingester = Ingester(
        config.database_url, events, config.server_name, manager.wake, delivery=manager
    )
    queuer = EduQueuer(storage, config.server_name, servers_in_room_via(events))
    sender_pb2_grpc.add_SenderServicer_to_server(
        SenderServicer(storage, queuer, manager.wake), context.server
    )

    await membership.start(replica_name(config, context.instance_id))
    await membership.beat()
    context.spawn(lambda: membership.run(manager.on_heartbeat), "sender:heartbeat")
    context.spawn(manager.run, "sender:claims")
    context.spawn(manager.maintenance, "sender:maintenance")
    database_url = config.database_url
    context.spawn(lambda: listen_for_wakes(database_url, manager), "sender:wakes")
    context.spawn(ingester.run, "sender:ingest")
    context.spawn(lambda: refresh_stats(storage), "sender:stats")

    async def stop() -> None:
        await manager.close()
        await membership.leave()
        await transport.close()

    context.on_stop(stop)
