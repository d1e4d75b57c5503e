"""Loopback ports for servers started by tests, bound once and never let go.

A :class:`HeldPort` binds a port the OS picks and keeps it bound (not
listening) for as long as the test server that owns it lives, so no other
process can take it between two starts of that server: a restarted fake
remote comes back on its own port, and a stopped one refuses connections
instead of reaching whoever bound the port next. Listening sockets for the
port are made with SO_REUSEPORT next to the holder; the kernel only hands
connections to listening sockets, and never gives a held port to a process
that asks for port 0. :class:`ReservedPort` is for servers that bind the
port themselves.
"""

from __future__ import annotations

import fcntl
import random
import socket
import tempfile
from pathlib import Path


def _reuse_port_socket() -> socket.socket:
    # IPPROTO_TCP so asyncio servers set TCP_NODELAY on what they accept (see mxfed.listening).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


class HeldPort:
    """A loopback TCP port held until :meth:`release`."""

    def __init__(self) -> None:
        self._holder = _reuse_port_socket()
        self._holder.bind(("127.0.0.1", 0))
        self.port: int = self._holder.getsockname()[1]

    def listening_socket(self, backlog: int = 128) -> socket.socket:
        """A new socket listening on the port (hand it to the server, which closes it)."""
        sock = _reuse_port_socket()
        try:
            sock.bind(("127.0.0.1", self.port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def release(self) -> None:
        self._holder.close()


# Below the kernel's ephemeral range (net.ipv4.ip_local_port_range starts at
# 32768): the OS never hands these out for port 0 or outbound connections.
_RESERVABLE = range(20_000, 32_000)
_LOCK_DIR = Path(tempfile.gettempdir()) / "mxfed-test-ports"


class ReservedPort:
    """A port for a server that must bind it itself without SO_REUSEPORT (Synapse).

    Taken from below the ephemeral range and reserved across test processes
    by a lock on ``<tmp>/mxfed-test-ports/<port>.lock``, held until
    :meth:`release`: nothing else on the machine is given it in between.
    """

    def __init__(self) -> None:
        _LOCK_DIR.mkdir(exist_ok=True)
        for port in random.sample(_RESERVABLE, len(_RESERVABLE)):
            lock = open(_LOCK_DIR / f"{port}.lock", "w")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            if _bindable(port):
                self.port = port
                self._lock = lock
                return
            lock.close()
        raise RuntimeError("no reservable loopback port left")

    def release(self) -> None:
        self._lock.close()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
