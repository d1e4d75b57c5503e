"""``mxfed.client``: an async Python library over mxfed's gRPC API, for bots and bridges.

A few lines to connect, join, listen and reply::

    from mxfed.client import Client, FilePosition

    async with Client.from_config(actor="echo-bot") as client:
        me = f"@echo:{client.server_name}"
        async for item in client.stream(position=FilePosition("echo.position")):
            event = item.event
            if event and event.type == "m.room.message" and event.sender != me:
                await client.send_message(event.room_id, me, f"echo: {event.body}",
                                          txn_id=f"echo-{event.event_id}")

Connection: the configuration the CLI uses (``--config``/``MXFED_CONFIG``,
``MXFED_*`` environment); the operator's certificate, or an actor's made by
``mxfed actors add NAME`` (``actor="NAME"``). Errors raise
:class:`MatrixError` (``.errcode``). The RPCs themselves: docs/api.md.
"""

from mxfed.client.client import Client, parse_mxc
from mxfed.client.errors import Forbidden, MatrixError, NotFound, Unavailable
from mxfed.client.types import (
    Backfilled,
    CreatedRoom,
    Event,
    EventStatus,
    FilePosition,
    Joined,
    KeysUploaded,
    Knocked,
    MediaInfo,
    Membership,
    PublicRooms,
    Receipt,
    RoomInfo,
    Sent,
    StreamItem,
    ThirdPartyInvited,
    ToDeviceMessage,
    Typing,
    Uploaded,
)

__all__ = [
    "Backfilled",
    "Client",
    "CreatedRoom",
    "Event",
    "EventStatus",
    "FilePosition",
    "Forbidden",
    "Joined",
    "KeysUploaded",
    "Knocked",
    "MatrixError",
    "MediaInfo",
    "Membership",
    "NotFound",
    "PublicRooms",
    "Receipt",
    "RoomInfo",
    "Sent",
    "StreamItem",
    "ThirdPartyInvited",
    "ToDeviceMessage",
    "Typing",
    "Unavailable",
    "Uploaded",
    "parse_mxc",
]
