"""Listening sockets every part binds: the federation API, gRPC and metrics.

``listen_reuse_port`` (off by default) binds them with SO_REUSEPORT, so that
several processes on one host can share a port (the kernel spreads the
connections) and a harness that holds a port can hand it to a part. Off, a
port already in use is an error at start, never a silent second listener.
"""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; an empty host means every IPv4 address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind_tcp(address: str, *, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    """A socket listening on ``address`` (``host:port``)."""
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a response written in two parts (headers, then body) waits out the
    # client's delayed ACK, about 40 ms per request on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        """Scrapes are not worth a log line each."""


def start_metrics_server(address: str, *, reuse_port: bool) -> int:
    """Serve Prometheus metrics on ``address`` from a daemon thread; returns the port bound."""
    host, port = split_host_port(address)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        allow_reuse_port = reuse_port

    server = make_server(host, port, make_wsgi_app(), Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_address[1])
