"""Errors the servicer turns into gRPC statuses with details "M_ERRCODE: message"."""

from __future__ import annotations

import grpc


class EventsError(Exception):
    status = grpc.StatusCode.INVALID_ARGUMENT
    errcode = "M_INVALID_PARAM"

    def __init__(self, message: str, errcode: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if errcode is not None:
            self.errcode = errcode

    @property
    def details(self) -> str:
        return f"{self.errcode}: {self.message}"


class BadRequest(EventsError):
    pass


class Forbidden(EventsError):
    status = grpc.StatusCode.PERMISSION_DENIED
    errcode = "M_FORBIDDEN"


class NotFound(EventsError):
    status = grpc.StatusCode.NOT_FOUND
    errcode = "M_NOT_FOUND"


class Conflict(EventsError):
    status = grpc.StatusCode.ALREADY_EXISTS
    errcode = "M_ROOM_IN_USE"
