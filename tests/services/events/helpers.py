"""Moved to ``tests/support/events_service.py``; kept for work in progress that imports it."""

from tests.support.events_service import EventsService, RemoteServer, RoomHead

__all__ = ["EventsService", "RemoteServer", "RoomHead"]
