"""Builds the keys service inside the common service runtime."""

from __future__ import annotations

from mxfed.service_runtime import ServiceContext


async def setup(context: ServiceContext) -> None:
    """Register the keys servicers on ``context.server``."""
