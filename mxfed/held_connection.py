"""Long-held PostgreSQL connections that come back after they are lost.

Some work keeps one connection for a long time: session advisory locks
(a guard's, a leader's) and LISTEN for notifications. PostgreSQL may end any
connection at any moment (``pg_terminate_backend``, a restart, a failover, a
pooler recycling it); what that connection held goes with it. A
:class:`HeldConnection` notices (asyncpg's termination listener, and any call
failing with a connection error), opens a new connection with a capped
backoff, and runs the owner's ``on_open`` on it (LISTEN again, take locks
again) before anyone uses it. Its ``generation`` grows with every new
connection, so a holder can tell a lock taken on an older connection is gone
(and must be re-checked, since another replica may hold it now) and a
listener can tell it may have missed notifications (read again from its
stored position, never from "now").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

RECONNECTS = Counter(
    "mxfed_held_connection_reconnects_total",
    "Long-held database connections opened again after one was lost, by use",
    ["connection"],
)
UP = Gauge(
    "mxfed_held_connection_up",
    "1 while a long-held database connection is open, by use",
    ["connection"],
)

# What a lost or unusable connection raises: asyncpg's own errors for a
# connection that is gone or was handed back to its pool, the server ending
# the session (administrator command, crash, shutdown, not yet accepting),
# and the socket's.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the database connection (or the server) is gone, not the query."""
    return isinstance(exc, CONNECTION_ERRORS)


class DatabaseUnavailable(ConnectionError):
    """The database could not be reached within the time a caller may wait."""


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (lost, refused, restarting,
    its socket gone), as opposed to a query it refused."""
    if isinstance(
        exc,
        (
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.OperatorInterventionError,
            asyncpg.InternalClientError,  # a connection torn down mid-operation
            DatabaseUnavailable,
        ),
    ):
        return True
    # A socket error or timeout raised inside asyncpg (connecting, reading).
    return isinstance(exc, (OSError, TimeoutError)) and _raised_in_asyncpg(exc)


def log_failure(logger: logging.Logger, message: str, exc: BaseException, **extra: Any) -> None:
    """Log a failed background step: a database that is away (expected during a restart or
    a failover, and retried) as a one-line warning, anything else with its traceback."""
    if is_database_unavailable(exc):
        logger.warning(
            f"{message}: the database is unavailable",
            extra={**extra, "error": str(exc) or type(exc).__name__},
        )
    else:
        logger.error(message, exc_info=exc, extra=extra)


def _raised_in_asyncpg(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module == "asyncpg" or module.startswith("asyncpg."):
            return True
        traceback = traceback.tb_next
    return False


def _closed(connection: asyncpg.Connection) -> bool:
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True  # a pool's connection already taken back after its loss


class Backoff:
    """Delays from ``first`` doubling to ``cap`` seconds, with jitter; ``reset`` on success."""

    def __init__(self, first: float = 0.1, cap: float = 1.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.2)

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())


Opener = Callable[[], Awaitable[asyncpg.Connection]]
Closer = Callable[[asyncpg.Connection], Awaitable[None]]


class HeldConnection:
    """One dedicated connection, re-opened (with ``on_open`` run again) whenever it is lost."""

    def __init__(
        self,
        name: str,
        open_connection: Opener,
        close_connection: Closer,
        *,
        on_open: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        on_lost: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._open = open_connection
        self._close = close_connection
        self._on_open = on_open
        self._on_lost = on_lost
        self._backoff = backoff or Backoff()
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        # Bumped on every new connection: what was held on an older one is gone.
        self.generation = 0
        self.lost_at: float | None = None
        self._closed = False

    @classmethod
    def from_pool(cls, pool: asyncpg.Pool, name: str, **options: Any) -> HeldConnection:
        """Held out of ``pool`` (its place given back when closed)."""

        async def open_connection() -> asyncpg.Connection:
            return await pool.acquire(timeout=10)

        async def close_connection(connection: asyncpg.Connection) -> None:
            # Ended rather than reset for reuse (it LISTENs, holds locks): the
            # pool opens a fresh one in its place when it needs one.
            if not _closed(connection):
                with contextlib.suppress(Exception):
                    connection.terminate()

        return cls(name, open_connection, close_connection, **options)

    @classmethod
    def from_url(cls, database_url: str, name: str, **options: Any) -> HeldConnection:
        """A connection of its own to ``database_url`` (closed by terminating it)."""

        async def open_connection() -> asyncpg.Connection:
            return await asyncpg.connect(database_url, timeout=10)

        async def close_connection(connection: asyncpg.Connection) -> None:
            connection.terminate()

        return cls(name, open_connection, close_connection, **options)

    @property
    def alive(self) -> bool:
        return self._connection is not None and not _closed(self._connection)

    async def connection(self) -> asyncpg.Connection:
        """The open connection, opening one (and retrying, backing off) if there is none."""
        connection = self._connection
        if connection is not None and not _closed(connection):
            return connection
        async with self._lock:
            while True:
                if self._closed:
                    raise asyncpg.InterfaceError(f"{self.name}: held connection closed")
                connection = self._connection
                if connection is not None and not _closed(connection):
                    return connection
                if connection is not None:
                    self._forget(connection)
                try:
                    connection = await self._open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not is_connection_error(exc) and not isinstance(exc, asyncpg.PostgresError):
                        raise
                    log.warning(
                        "cannot open a held database connection; retrying",
                        extra={"connection": self.name, "error": str(exc) or type(exc).__name__},
                    )
                    await self._backoff.wait()
                    continue
                try:
                    connection.add_termination_listener(self._terminated)
                    self.generation += 1
                    self._connection = connection
                    if self._on_open is not None:
                        await self._on_open(connection)
                except asyncio.CancelledError:
                    self._forget(connection)
                    await self._close(connection)
                    raise
                except Exception as exc:
                    if not is_connection_error(exc) and not isinstance(exc, asyncpg.PostgresError):
                        raise
                    log.warning(
                        "held database connection failed while opening; retrying",
                        extra={"connection": self.name, "error": str(exc) or type(exc).__name__},
                    )
                    self._forget(connection)
                    await self._close(connection)
                    await self._backoff.wait()
                    continue
                self._backoff.reset()
                UP.labels(self.name).set(1)
                if self.generation > 1:
                    RECONNECTS.labels(self.name).inc()
                    down = (
                        round(time.monotonic() - self.lost_at, 3) if self.lost_at is not None else 0
                    )
                    log.info(
                        "held database connection open again",
                        extra={"connection": self.name, "seconds_without": down},
                    )
                self.lost_at = None
                return connection

    async def run(self, query: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        """``query(connection)``; a connection error also marks the connection lost."""
        connection = await self.connection()
        try:
            return await query(connection)
        except Exception as exc:
            if is_connection_error(exc) or _closed(connection):
                self.discard(connection)
            raise

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.run(lambda connection: connection.fetchval(sql, *args))

    def discard(self, connection: asyncpg.Connection | None = None) -> None:
        """Treat the connection (the current one if None) as lost: the next use opens another."""
        target = connection if connection is not None else self._connection
        if target is None or id(target) != id(self._connection):
            return
        self._forget(target)
        with contextlib.suppress(Exception):
            if not _closed(target):
                target.terminate()

    def _terminated(self, connection: object) -> None:
        current = self._connection
        if current is None:
            return
        with contextlib.suppress(Exception):
            if current is not connection and not _closed(current):
                return
        self._forget(current)

    def _forget(self, connection: asyncpg.Connection) -> None:
        if id(self._connection) != id(connection):
            return
        self._connection = None
        UP.labels(self.name).set(0)
        if self._closed:
            return
        self.lost_at = time.monotonic()
        log.warning("held database connection lost", extra={"connection": self.name})
        with contextlib.suppress(Exception):
            connection.remove_termination_listener(self._terminated)
        if self._on_lost is not None:
            self._on_lost()

    async def close(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        UP.labels(self.name).set(0)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.remove_termination_listener(self._terminated)
            await self._close(connection)
