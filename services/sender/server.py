"""Builds the sender service inside the common service runtime."""

from __future__ import annotations

from mxfed.service_runtime import ServiceContext


async def setup(context: ServiceContext) -> None:
    """Register the sender servicers on ``context.server``."""
