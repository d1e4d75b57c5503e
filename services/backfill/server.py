"""Builds the backfill service inside the common service runtime."""

from __future__ import annotations

from mxfed.service_runtime import ServiceContext


async def setup(context: ServiceContext) -> None:
    """Register the backfill servicers on ``context.server``."""
