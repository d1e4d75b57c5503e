"""gRPC channels from the gateway to the services, shared by all requests."""

from __future__ import annotations

import grpc

from gateway.server_up import ServerUpNotifier
from mxfed.config import SERVICE_NAMES, Config
from mxfed.internal_plane import Caller, open_channel

GATEWAY = Caller.part("gateway")


class ServiceClients:
    """One channel per serving process (accounts shares the keys channel while the keys
    process hosts it); stubs are cheap and made per use by the routes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.channels: dict[str, grpc.aio.Channel] = {
            name: open_channel(config, name, caller=GATEWAY)
            for name in SERVICE_NAMES
            if config.host_part(name) == name
        }
        self.server_up = ServerUpNotifier(self.channels["sender"])

    def channel(self, service: str) -> grpc.aio.Channel:
        return self.channels[self.config.host_part(service)]

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
