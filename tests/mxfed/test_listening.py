"""Sockets the parts listen on: what the connections they accept are set up with."""

from __future__ import annotations

import asyncio
import socket

from mxfed.listening import bind_tcp
from tests.support.ports import HeldPort


async def _accepted_socket_options(listener: socket.socket) -> int:
    """TCP_NODELAY of the connection an asyncio server on ``listener`` accepts."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Protocol, sock=listener)
    try:
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_accepted_by_a_part_send_small_writes_at_once() -> None:
    """Nagle's algorithm off on accepted connections: with it, a response written in two
    parts waited out the client's delayed ACK (about 40 ms per federation request)."""
    listener = bind_tcp("127.0.0.1:0", reuse_port=False)
    assert await _accepted_socket_options(listener) != 0


async def test_test_servers_on_held_ports_send_small_writes_at_once() -> None:
    held = HeldPort()
    try:
        assert await _accepted_socket_options(held.listening_socket()) != 0
    finally:
        held.release()
