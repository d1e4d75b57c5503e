"""Outbound EDUs: checking them and working out which destinations get each.

EDU formats: https://spec.matrix.org/v1.19/server-server-api/#edus and the sections
of each EDU type. Room-scoped EDUs (typing, receipts, and device or
signing-key updates given ``room_ids``) go to the servers with joined members
in the room, asked of the events service, minus us. Typing and receipts are
*volatile*: dropped when a destination is down for long (catch-up), and a
newer typing state of a user in a room replaces an unsent older one. Device
list updates, signing key updates and to-device messages are *durable*: they
wait in the queue however long the destination is down.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.server_names import is_valid_server_name
from services.sender.storage import QueuedEdu, SenderStorage

VOLATILE_EDU_TYPES = frozenset({"m.typing", "m.receipt"})
ROOM_SCOPED_EDU_TYPES = frozenset({"m.typing", "m.receipt"})
MAX_MESSAGE_ID_LENGTH = 32
_MESSAGE_ID_ALPHABET = string.ascii_letters + string.digits

ServersInRoom = Callable[[str], Awaitable[Sequence[str]]]


class InvalidEdu(ValueError):
    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(f"{errcode}: {message}")
        self.errcode = errcode


@dataclass
class EduRequest:
    edu_type: str
    content_json: bytes
    destinations: Sequence[str] = field(default_factory=list)
    room_ids: Sequence[str] = field(default_factory=list)


@dataclass
class ToDeviceRequest:
    sender: str
    event_type: str
    message_id: str
    messages_json: bytes


def server_of(user_id: str) -> str:
    if not user_id.startswith("@") or ":" not in user_id:
        raise InvalidEdu("M_INVALID_PARAM", f"not a user id: {user_id!r}")
    return user_id.split(":", 1)[1]


def _object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = decode_json(data)
    except ValueError as exc:
        raise InvalidEdu("M_NOT_JSON", f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidEdu("M_BAD_JSON", f"{what} is not a JSON object")
    return value


def new_message_id() -> str:
    return "".join(secrets.choice(_MESSAGE_ID_ALPHABET) for _ in range(16))


class EduQueuer:
    def __init__(
        self, storage: SenderStorage, server_name: str, servers_in_room: ServersInRoom
    ) -> None:
        self.storage = storage
        self.server_name = server_name
        self.servers_in_room = servers_in_room

    async def queue(
        self, edus: Sequence[EduRequest], to_device: Sequence[ToDeviceRequest]
    ) -> list[QueuedEdu]:
        """Check every EDU first, then store all of them (all or nothing)."""
        rows: list[QueuedEdu] = []
        for edu in edus:
            rows.extend(await self._rows_for_edu(edu))
        for message in to_device:
            rows.extend(self._rows_for_to_device(message))
        await self.storage.queue_edus(rows)
        return rows

    async def _destinations(self, explicit: Sequence[str], room_ids: Sequence[str]) -> list[str]:
        found = set(explicit)
        for room_id in room_ids:
            found.update(await self.servers_in_room(room_id))
        for destination in found:
            if not is_valid_server_name(destination):
                raise InvalidEdu("M_INVALID_PARAM", f"not a server name: {destination!r}")
        found.discard(self.server_name)
        return sorted(found)

    async def _rows_for_edu(self, edu: EduRequest) -> list[QueuedEdu]:
        edu_type = edu.edu_type
        content = _object(edu.content_json, f"{edu_type} content")
        if edu_type == "m.presence":
            raise InvalidEdu("M_FORBIDDEN", "presence is not federated by this server")
        if edu_type == "m.direct_to_device":
            raise InvalidEdu("M_INVALID_PARAM", "send to-device messages as ToDevice")
        if edu_type == "m.typing":
            return await self._typing(edu, content)
        if edu_type == "m.receipt":
            return await self._receipts(edu, content)
        if edu_type in ("m.device_list_update", "m.signing_key_update"):
            user_id = content.get("user_id")
            if not isinstance(user_id, str) or server_of(user_id) != self.server_name:
                raise InvalidEdu("M_INVALID_PARAM", f"{edu_type} needs a local user_id")
            if edu_type == "m.device_list_update" and (
                not isinstance(content.get("device_id"), str)
                or not isinstance(content.get("stream_id"), int)
            ):
                raise InvalidEdu(
                    "M_INVALID_PARAM", "m.device_list_update needs device_id and stream_id"
                )
        elif not edu.destinations and not edu.room_ids:
            raise InvalidEdu("M_INVALID_PARAM", f"{edu_type} needs destinations or room_ids")
        destinations = await self._destinations(edu.destinations, edu.room_ids)
        data = encode_json(content)
        volatile = edu_type in VOLATILE_EDU_TYPES
        return [QueuedEdu(d, edu_type, data, volatile) for d in destinations]

    async def _typing(self, edu: EduRequest, content: dict[str, Any]) -> list[QueuedEdu]:
        room_id, user_id, typing = (content.get(k) for k in ("room_id", "user_id", "typing"))
        if not isinstance(room_id, str) or not isinstance(user_id, str):
            raise InvalidEdu("M_INVALID_PARAM", "m.typing needs room_id and user_id")
        if not isinstance(typing, bool):
            raise InvalidEdu("M_INVALID_PARAM", "m.typing needs a boolean typing")
        if server_of(user_id) != self.server_name:
            raise InvalidEdu("M_INVALID_PARAM", "m.typing for a user of another server")
        destinations = await self._destinations(edu.destinations, edu.room_ids or [room_id])
        data = encode_json({"room_id": room_id, "user_id": user_id, "typing": typing})
        key = f"typing {room_id} {user_id}"
        return [QueuedEdu(d, "m.typing", data, True, key) for d in destinations]

    async def _receipts(self, edu: EduRequest, content: dict[str, Any]) -> list[QueuedEdu]:
        rows: list[QueuedEdu] = []
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                raise InvalidEdu("M_INVALID_PARAM", f"receipts of {room_id} are not an object")
            if set(by_type) - {"m.read"}:
                # m.read.private must never leave this server; other types are not federated.
                raise InvalidEdu("M_INVALID_PARAM", "only m.read receipts are federated")
            receipts = by_type.get("m.read")
            if not isinstance(receipts, dict) or not receipts:
                continue
            for user_id, receipt in receipts.items():
                if server_of(user_id) != self.server_name:
                    raise InvalidEdu("M_INVALID_PARAM", "receipt of a user of another server")
                if (
                    not isinstance(receipt, dict)
                    or not isinstance(receipt.get("event_ids"), list)
                    or len(receipt["event_ids"]) != 1
                    or not isinstance(receipt.get("data"), dict)
                ):
                    raise InvalidEdu(
                        "M_INVALID_PARAM", "a receipt needs exactly one event id and data"
                    )
            destinations = await self._destinations(edu.destinations, edu.room_ids or [room_id])
            data = encode_json({room_id: {"m.read": receipts}})
            key = f"receipt {room_id} {next(iter(receipts))}" if len(receipts) == 1 else None
            rows.extend(QueuedEdu(d, "m.receipt", data, True, key) for d in destinations)
        return rows

    def _rows_for_to_device(self, message: ToDeviceRequest) -> list[QueuedEdu]:
        if server_of(message.sender) != self.server_name:
            raise InvalidEdu("M_INVALID_PARAM", "to-device sender must be a local user")
        if not message.event_type:
            raise InvalidEdu("M_INVALID_PARAM", "to-device messages need a type")
        if len(message.message_id) > MAX_MESSAGE_ID_LENGTH:
            raise InvalidEdu("M_INVALID_PARAM", "message_id is longer than 32 characters")
        messages = _object(message.messages_json, "to-device messages")
        by_server: dict[str, dict[str, Any]] = {}
        for user_id, devices in messages.items():
            if not isinstance(devices, dict):
                raise InvalidEdu("M_INVALID_PARAM", f"messages for {user_id} are not an object")
            server = server_of(user_id)
            if server != self.server_name:
                by_server.setdefault(server, {})[user_id] = devices
        rows = []
        for server, users in sorted(by_server.items()):
            content = {
                "sender": message.sender,
                "type": message.event_type,
                "message_id": message.message_id or new_message_id(),
                "messages": users,
            }
            rows.append(QueuedEdu(server, "m.direct_to_device", encode_json(content), False))
        return rows
