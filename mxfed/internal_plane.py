"""The internal plane: every gRPC connection between mxfed's parts and its local actors.

Every internal channel is opened by :func:`open_channel`, every gRPC server is
made by :func:`new_server` and every server port is bound by
:func:`bind_port`, so that transport security, caller authorization and call
options apply to all of them in one place:

- **Mutual TLS** with certificates from the deployment's private CA
  (``mxfed/internal_pki.py`` issues them; ``mxfed/internal_identity.py``
  says where they live). A server accepts only clients with a certificate
  from that CA: a client without one, or with another CA's, fails at the TLS
  handshake and never reaches a handler. Clients check the server's
  certificate against the fixed name ``<service>.mxfed.internal``, so
  certificates do not depend on addresses.
- **Authorization per RPC** by the caller's identity (the SAN URI of its
  certificate), from the table in ``mxfed/internal_access.py``; a caller
  that may not call a method gets PERMISSION_DENIED.
- **A deadline on every unary call**: a call that sets no timeout gets
  ``internal_call_timeout``.
- **Metrics of every call at both ends** (``mxfed.process_metrics``), and when
  tracing is on, W3C trace context in the metadata of every call (``mxfed.tracing``).

``internal_tls: false`` makes the plane plaintext and unauthenticated, for
development only; every process says so loudly in its log.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mxfed import tracing
from mxfed.config import Config
from mxfed.identity_files import IdentityError
from mxfed.internal_access import access_for, rpc_methods
from mxfed.internal_identity import (
    CA_CERTIFICATE_FILE,
    CERTIFICATE_FILE,
    OPERATOR,
    PRIVATE_KEY_FILE,
    Caller,
    CallerKind,
    identity_directory,
    server_name_of,
)
from mxfed.process_metrics import ServerMetrics, client_interceptors
from mxfed.service_errors import error_status

__all__ = [
    "GRPC_OPTIONS",
    "OPERATOR",
    "Caller",
    "CallerKind",
    "InternalPlaneError",
    "bind_port",
    "new_server",
    "open_channel",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _service_config() -> str:
    """Retry an idempotent call once (on another replica: round robin) when it fails
    with UNAVAILABLE: reads (Query*), checks (Verify*, health) and input that is
    de-duplicated by its ids (Input*: a transaction by origin and txn id, PDUs by
    event id, EDUs by message id). Nothing that creates (Perform*) is retried."""
    names = [
        {"service": service, "method": method}
        for service, method in rpc_methods()
        if method.startswith(("Query", "Verify", "Input", "Check"))
    ]
    policy = {
        "maxAttempts": 2,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # With several replicas behind one DNS name, spread calls over all of them.
    ("grpc.lb_policy_name", "round_robin"),
    # A replica that comes back is dialled again within seconds (gRPC's own
    # backoff grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _service_config()),
]


class InternalPlaneError(IdentityError):
    """This process lacks what it needs to join the internal plane (said in one line)."""


def client_address(address: str) -> str:
    """A listen address made dialable: a wildcard host becomes loopback."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        return f"127.0.0.1:{port}"
    return address


_plaintext_announced = False


def _announce_plaintext() -> None:
    global _plaintext_announced
    if not _plaintext_announced:
        _plaintext_announced = True
        log.warning(
            "internal_tls is false: internal gRPC is PLAINTEXT and UNAUTHENTICATED; anyone who "
            "can reach the service ports can act as this server. Development only."
        )


def identity_files(config: Config, caller: Caller) -> tuple[bytes, bytes, bytes]:
    """``caller``'s (CA certificate, private key, certificate), PEM."""
    directory = identity_directory(config.internal_tls_directory, caller)
    try:
        return (
            (directory / CA_CERTIFICATE_FILE).read_bytes(),
            (directory / PRIVATE_KEY_FILE).read_bytes(),
            (directory / CERTIFICATE_FILE).read_bytes(),
        )
    except OSError as exc:
        raise InternalPlaneError(
            f"no internal TLS certificate for {caller} ({exc.strerror}: {exc.filename})",
            "`mxfed init` or a first `mxfed run` makes them, `mxfed actors add NAME` "
            "makes an actor's (or set internal_tls: false for development)",
        ) from exc


def open_channel(
    config: Config, service: str, *, caller: Caller, address: str | None = None
) -> grpc.aio.Channel:
    """A channel from ``caller`` to the mxfed service ``service`` (``keys``, ``events``...).

    ``address`` defaults to the service's configured address.
    """
    target = client_address(address or config.service_address(service))
    if config.internal_tls:
        ca, key, certificate = identity_files(config, caller)
        channel = grpc.aio.secure_channel(
            target,
            grpc.ssl_channel_credentials(ca, key, certificate),
            options=[
                *GRPC_OPTIONS,
                ("grpc.ssl_target_name_override", server_name_of(config.host_part(service))),
            ],
            interceptors=[*tracing.client_interceptors(), *client_interceptors()],
        )
    else:
        _announce_plaintext()
        channel = grpc.aio.insecure_channel(
            target,
            options=GRPC_OPTIONS,
            interceptors=[*tracing.client_interceptors(), *client_interceptors()],
        )
    return DeadlineChannel(channel, config.internal_call_timeout)


def new_server(config: Config, part: str) -> grpc.aio.Server:
    """The gRPC server of the part ``part``; bind it with :func:`bind_port`."""
    # gRPC binds with SO_REUSEPORT unless told not to: a port in use must fail the start.
    options = [*GRPC_OPTIONS, ("grpc.so_reuseport", int(config.listen_reuse_port))]
    if not config.internal_tls:
        _announce_plaintext()
        return grpc.aio.server(
            options=options,
            interceptors=[*tracing.server_interceptors(), ServerMetrics(), _Unavailable()],
        )
    # Tracing (when on) and metrics outermost: refusals are answers like any other.
    return grpc.aio.server(
        options=options,
        interceptors=[
            *tracing.server_interceptors(),
            ServerMetrics(),
            _Authorizer(),
            _Unavailable(),
        ],
    )


def bind_port(server: grpc.aio.Server, config: Config, part: str, address: str) -> int:
    """Bind ``address`` (port 0 picks a free one) on ``part``'s server; returns the bound port."""
    if config.internal_tls:
        ca, key, certificate = identity_files(config, Caller.part(part))
        credentials = grpc.ssl_server_credentials(
            [(key, certificate)], root_certificates=ca, require_client_auth=True
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise InternalPlaneError(f"cannot listen on {address}", f"check {part}_listen")
    return port


# Authorization --------------------------------------------------------------

# grpc puts the URI SANs of the verified peer certificate under this property.
_URI_PROPERTY = "peer_uri"


def caller_of(context: grpc.aio.ServicerContext) -> Caller | None:
    """The caller its verified client certificate names (None when it names none)."""
    for uri in context.auth_context().get(_URI_PROPERTY, ()):
        try:
            return Caller.parse(uri.decode())
        except ValueError:
            continue
    return None


async def _refuse(context: grpc.aio.ServicerContext, method: str) -> None:
    caller = caller_of(context)
    if caller is None:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, "the client certificate names no mxfed caller"
        )
    elif not access_for(method).admits(caller):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller} may not call {method}")


def _authorized(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` behind the authorization check for ``method``."""
    if handler.unary_unary is not None:
        inner_unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse(context, method)
            return await inner_unary(request, context)

        return handler._replace(unary_unary=unary_unary)
    kind = next(
        name
        for name in ("unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, name) is not None
    )
    return handler._replace(**{kind: _checked_behaviour(getattr(handler, kind), method)})


def _checked_behaviour(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await _refuse(context, method)
            async for item in inner(request, context):
                yield item

        return streaming

    async def writing(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _refuse(context, method)
        return await inner(request, context)

    return writing


class _Authorizer(grpc.aio.ServerInterceptor):
    """Puts every method handler behind the authorization check.

    grpc.aio interceptors do not see the peer's auth context, so the check
    runs inside the handler it returns; handlers are wrapped once per method.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = _authorized(handler, method)
        return wrapped


# Unavailable dependencies ---------------------------------------------------

# Details of the UNAVAILABLE a part answers while its database is away; the
# gateway answers 503 with Retry-After (a retry a few seconds later works).
DATABASE_UNAVAILABLE = "the database is unavailable; try again shortly"


def is_database_unavailable(exc: BaseException) -> bool:
    """:func:`mxfed.held_connection.is_database_unavailable`, imported when first needed: the
    gateway, which has no database, does not load the database driver for it."""
    from mxfed.held_connection import is_database_unavailable as database_unavailable

    return database_unavailable(exc)


def unavailable_details(exc: Exception) -> str | None:
    """The UNAVAILABLE details for a failure that says a dependency is away, else None."""
    if is_database_unavailable(exc):
        return DATABASE_UNAVAILABLE
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return "an internal service is unavailable; try again shortly"
    return None


async def _answer_unavailable(
    exc: Exception, context: grpc.aio.ServicerContext, method: str
) -> None:
    details = unavailable_details(exc)
    if details is None:
        raise exc
    log.warning(
        "dependency unavailable; answering UNAVAILABLE",
        extra={"method": method, "error": str(exc) or type(exc).__name__},
    )
    status = error_status(grpc.StatusCode.UNAVAILABLE, "M_UNKNOWN", details)
    await context.abort(status.code, status.details, status.trailing_metadata)


# How long a call that may run again waits for the database to come back (within its
# own deadline), trying again every DATABASE_RETRY_INTERVAL seconds.
DATABASE_WAIT = 15.0
DATABASE_RETRY_INTERVAL = 0.5


def _waits_for_the_database(method: str, request: Any) -> bool:
    """Calls that may simply run again once the database is back: reads and checks, and a
    local actor's call that carries its own idempotency key (``txn_id``). Federation
    input (Input*) is answered UNAVAILABLE at once: the remote retries it later (503
    with Retry-After), as it would any transaction."""
    name = method.rpartition("/")[2]
    if name.startswith(("Query", "Verify")):
        return True
    return name.startswith("Perform") and bool(getattr(request, "txn_id", ""))


async def retried_while_database_away(
    run: Callable[[], Awaitable[T]], remaining: Callable[[], float | None]
) -> T:
    """``run()``, run again every :data:`DATABASE_RETRY_INTERVAL` seconds while it fails
    because the database is away, for up to :data:`DATABASE_WAIT` seconds and ending a
    second before the call's deadline (``remaining()`` seconds, None: no deadline)."""
    loop = asyncio.get_running_loop()
    give_up: float | None = None
    while True:
        try:
            return await run()
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            if give_up is None:
                left = remaining()
                wait = DATABASE_WAIT if left is None else left - 1.0
                give_up = loop.time() + min(DATABASE_WAIT, wait)
            if loop.time() + DATABASE_RETRY_INTERVAL >= give_up:
                raise
            await asyncio.sleep(DATABASE_RETRY_INTERVAL)


def _unavailable_mapped(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` answering UNAVAILABLE (not UNKNOWN with a traceback) when the database
    or a service it calls is away; a call that may run again waits for the database (up
    to :data:`DATABASE_WAIT` seconds, within its deadline) instead."""
    if handler.unary_unary is not None:
        inner_unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if _waits_for_the_database(method, request):
                    return await retried_while_database_away(
                        lambda: inner_unary(request, context), context.time_remaining
                    )
                return await inner_unary(request, context)
            except Exception as exc:
                await _answer_unavailable(exc, context, method)
                raise

        return handler._replace(unary_unary=unary_unary)
    kind = next(
        name
        for name in ("unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, name) is not None
    )
    inner = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in inner(request, context):
                    yield item
            except Exception as exc:
                await _answer_unavailable(exc, context, method)
                raise

        return handler._replace(**{kind: streaming})

    async def writing(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except Exception as exc:
            await _answer_unavailable(exc, context, method)
            raise

    return handler._replace(**{kind: writing})


class _Unavailable(grpc.aio.ServerInterceptor):
    """Every handler behind :func:`_unavailable_mapped` (wrapped once per method)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = _unavailable_mapped(handler, method)
        return wrapped


# Deadlines ------------------------------------------------------------------


class _DeadlineMultiCallable:
    """A unary-unary callable that gives a call without a timeout the default one."""

    def __init__(self, inner: Any, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout

    def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._inner(request, timeout=self._timeout if timeout is None else timeout, **kwargs)


class DeadlineChannel(grpc.aio.Channel):
    """A channel whose unary calls always have a deadline (the default when none is given)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._channel = channel
        self._timeout = timeout

    async def __aenter__(self) -> DeadlineChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _DeadlineMultiCallable(
            self._channel.unary_unary(method, *args, **kwargs), self._timeout
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(method, *args, **kwargs)
