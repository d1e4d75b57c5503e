"""gRPC layer of Accounts (``mxfed.accounts.v1.Accounts``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
import orjson

from matrix_protocol.canonical_json import decode_json
from mxfed.clock import now_ms
from mxfed.service_errors import (
    BadRequest,
    ServiceError,
    abort,
    json_field,
    reports_service_errors,
)
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from services.accounts.local import LocalAccounts
from services.accounts.presence import RemotePresence
from services.accounts.remote import RemoteDeviceLists
from services.accounts.to_device import StoredMessage, ToDeviceHub, ToDeviceInbox
from services.accounts.validation import user_server

log = logging.getLogger(__name__)

T = TypeVar("T")


def _device_query(data: bytes) -> dict[str, list[str]]:
    wanted = json_field(data, "device_keys", {})
    for user_id, devices in wanted.items():
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise BadRequest(f"device_keys[{user_id}] must be a list of device ids", "M_BAD_JSON")
    return wanted


def _decoded(items: Any) -> list[Any]:
    """JSON bytes → values; None for one that is not JSON (counted as ignored)."""
    values = []
    for data in items:
        try:
            values.append(decode_json(data))
        except ValueError:
            values.append(None)
    return values


def _to_device_message(message: StoredMessage) -> accounts_pb2.ToDeviceMessage:
    return accounts_pb2.ToDeviceMessage(
        position=message.position,
        sender=message.sender,
        type=message.type,
        content_json=message.content_json.encode(),
        origin=message.origin,
        message_id=message.message_id,
        received_ts=message.received_ts,
    )


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(
        self,
        local: LocalAccounts,
        remote: RemoteDeviceLists,
        to_device: ToDeviceInbox | None = None,
        to_device_hub: ToDeviceHub | None = None,
        presence: RemotePresence | None = None,
    ) -> None:
        self.local = local
        self.remote = remote
        self.to_device = to_device or ToDeviceInbox(local.pool, local.server_name)
        self.to_device_hub = to_device_hub or ToDeviceHub(local.pool)
        self.presence = presence or RemotePresence(local.pool, local.server_name, enabled=False)

    # ------------------------------------------------------------ profiles

    @reports_service_errors
    async def PerformSetProfile(self, request: Any, context: Any) -> Any:  # noqa: N802
        fields = json_field(request.fields_json, "fields_json", {})
        profile = await self.local.set_profile(request.user_id, fields, request.replace)
        return accounts_pb2.PerformSetProfileResponse(profile_json=orjson.dumps(profile))

    @reports_service_errors
    async def QueryProfile(self, request: Any, context: Any) -> Any:  # noqa: N802
        profile = await self.local.profile(request.user_id, request.field)
        if profile is None:
            return accounts_pb2.QueryProfileResponse(found=False)
        return accounts_pb2.QueryProfileResponse(found=True, profile_json=orjson.dumps(profile))

    # ------------------------------------------------------------ devices and keys

    @reports_service_errors
    async def PerformUploadKeys(self, request: Any, context: Any) -> Any:  # noqa: N802
        device_keys = json_field(request.device_keys_json, "device_keys_json", {}) or None
        counts, stream_id = await self.local.upload_keys(
            request.user_id,
            request.device_id,
            display_name=request.display_name if request.HasField("display_name") else None,
            device_keys=device_keys,
            one_time_keys=json_field(request.one_time_keys_json, "one_time_keys_json", {}),
            fallback_keys=json_field(request.fallback_keys_json, "fallback_keys_json", {}),
        )
        return accounts_pb2.PerformUploadKeysResponse(
            one_time_key_counts=counts, stream_id=stream_id
        )

    @reports_service_errors
    async def PerformUploadCrossSigningKeys(self, request: Any, context: Any) -> Any:  # noqa: N802
        keys = {}
        for usage, data in (
            ("master", request.master_key_json),
            ("self_signing", request.self_signing_key_json),
            ("user_signing", request.user_signing_key_json),
        ):
            if data:
                keys[usage] = json_field(data, f"{usage}_key_json", {})
        await self.local.upload_cross_signing_keys(request.user_id, keys)
        return accounts_pb2.PerformUploadCrossSigningKeysResponse()

    @reports_service_errors
    async def PerformDeleteDevice(self, request: Any, context: Any) -> Any:  # noqa: N802
        deleted, stream_id = await self.local.delete_device(request.user_id, request.device_id)
        return accounts_pb2.PerformDeleteDeviceResponse(deleted=deleted, stream_id=stream_id)

    @reports_service_errors
    async def QueryUserDevices(self, request: Any, context: Any) -> Any:  # noqa: N802
        body = await self.local.user_devices(request.user_id)
        return accounts_pb2.QueryUserDevicesResponse(response_json=orjson.dumps(body))

    @reports_service_errors
    async def QueryKeys(self, request: Any, context: Any) -> Any:  # noqa: N802
        wanted = _device_query(request.device_keys_json)
        local = {u: d for u, d in wanted.items() if user_server(u) == self.local.server_name}
        others = {u: d for u, d in wanted.items() if u not in local}
        if request.local_only:
            body = await self.local.query_keys(wanted)  # refuses users of other servers
        else:
            for user_id in others:
                if user_server(user_id) is None:
                    raise BadRequest(f"{user_id!r} is not a valid user id")
            body = await self.local.query_keys(local)
            remote = await self.remote.query_keys(others)
            for field in ("device_keys", "master_keys", "self_signing_keys"):
                body[field].update(remote[field])
            body["failures"] = remote["failures"]
        return accounts_pb2.QueryKeysResponse(response_json=orjson.dumps(body))

    @reports_service_errors
    async def PerformClaimKeys(self, request: Any, context: Any) -> Any:  # noqa: N802
        wanted = json_field(request.one_time_keys_json, "one_time_keys", {})
        for user_id, devices in wanted.items():
            if not isinstance(devices, dict) or not all(
                isinstance(a, str) and a for a in devices.values()
            ):
                raise BadRequest(
                    f"one_time_keys[{user_id}] must map device ids to algorithms", "M_BAD_JSON"
                )
        body = await self.local.claim_keys(wanted)
        return accounts_pb2.PerformClaimKeysResponse(response_json=orjson.dumps(body))

    # ------------------------------------------------------------ OpenID

    @reports_service_errors
    async def PerformMintOpenIdToken(self, request: Any, context: Any) -> Any:  # noqa: N802
        token, ttl = await self.local.mint_openid_token(request.user_id, request.ttl_ms)
        return accounts_pb2.PerformMintOpenIdTokenResponse(access_token=token, expires_in_ms=ttl)

    @reports_service_errors
    async def QueryOpenIdToken(self, request: Any, context: Any) -> Any:  # noqa: N802
        user_id = await self.local.openid_user(request.access_token)
        return accounts_pb2.QueryOpenIdTokenResponse(
            found=user_id is not None, user_id=user_id or ""
        )

    # ------------------------------------------------------------ remote device lists

    @reports_service_errors
    async def QueryRemoteDevices(self, request: Any, context: Any) -> Any:  # noqa: N802
        body, from_cache = await self.remote.devices(request.user_id, request.force_resync)
        return accounts_pb2.QueryRemoteDevicesResponse(
            response_json=orjson.dumps(body), from_cache=from_cache
        )

    @reports_service_errors
    async def InputDeviceListUpdates(self, request: Any, context: Any) -> Any:  # noqa: N802
        if not request.origin:
            raise BadRequest("origin is required", "M_MISSING_PARAM")
        device_updates = _decoded(request.device_list_updates)
        signing_updates = _decoded(request.signing_key_updates)
        reply = accounts_pb2.InputDeviceListUpdatesResponse()
        if device_updates or signing_updates:
            reply.applied, reply.resyncs, reply.ignored = await self.remote.input_edus(
                request.origin, device_updates, signing_updates
            )
        if request.to_device_messages:
            outcome = await self.to_device.input_edus(
                request.origin, _decoded(request.to_device_messages)
            )
            reply.to_device_stored = outcome.stored
            reply.to_device_duplicates = outcome.duplicates
            reply.to_device_ignored = outcome.ignored
        if request.presence_updates:
            reply.presence_stored, reply.presence_ignored = await self.presence.input_edus(
                request.origin, _decoded(request.presence_updates)
            )
        return reply

    # ------------------------------------------------------------ to-device inbox

    @reports_service_errors
    async def QueryToDeviceMessages(self, request: Any, context: Any) -> Any:  # noqa: N802
        messages, more = await self.to_device.query(
            request.user_id, request.device_id, request.after_position, request.limit
        )
        return accounts_pb2.QueryToDeviceMessagesResponse(
            messages=[_to_device_message(m) for m in messages],
            more=more,
            position=messages[-1].position if messages else request.after_position,
        )

    @reports_service_errors
    async def PerformAckToDeviceMessages(self, request: Any, context: Any) -> Any:  # noqa: N802
        deleted = await self.to_device.ack(
            request.user_id, request.device_id, request.up_to_position
        )
        return accounts_pb2.PerformAckToDeviceMessagesResponse(deleted=deleted)

    async def StreamToDeviceMessages(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[accounts_pb2.ToDeviceMessage]:
        try:
            self.to_device.check_device(request.user_id, request.device_id)
        except ServiceError as error:
            await abort(context, error)
        async for message in self.to_device_hub.follow(
            request.user_id, request.device_id, request.after_position
        ):
            yield _to_device_message(message)

    # ------------------------------------------------------------ presence

    @reports_service_errors
    async def QueryPresence(self, request: Any, context: Any) -> Any:  # noqa: N802
        now = now_ms()
        states = await self.presence.query(list(request.user_ids))
        reply = accounts_pb2.QueryPresenceResponse()
        for state in states:
            entry = reply.presence.add(
                user_id=state.user_id,
                presence=state.presence,
                last_active_ago=max(0, now - state.last_active_ts),
                currently_active=state.currently_active,
                received_ts=state.received_ts,
            )
            if state.status_msg is not None:
                entry.status_msg = state.status_msg
        return reply
