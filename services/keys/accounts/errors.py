"""Errors the Accounts servicer turns into gRPC statuses "M_ERRCODE: message"."""

from __future__ import annotations

import grpc


class AccountsError(Exception):
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


class BadRequest(AccountsError):
    pass


class NotFound(AccountsError):
    status = grpc.StatusCode.NOT_FOUND
    errcode = "M_NOT_FOUND"


class Unavailable(AccountsError):
    status = grpc.StatusCode.UNAVAILABLE
    errcode = "M_UNKNOWN"
