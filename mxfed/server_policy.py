"""Which remote servers this mxfed federates with: the operator's block and allow lists.

``mxfed servers block NAME`` (glob patterns) refuses all federation with a
server: its requests are answered 403 ``M_FORBIDDEN`` by the gateway, the
federation client refuses to send it anything (:class:`DestinationBlockedError`),
the sender drops what was queued for it, and its events in rooms are
soft-failed. In allow-list mode only servers an allow pattern matches are
federated with. Our own server name is never blocked.

The lists are stored by the events process (``mxfed.events.v1.Admin``);
every process holds a copy in :data:`SERVER_POLICY`, refreshed by
:func:`follow_server_policy` (a poll of ``QueryServerPolicy`` that returns
nothing when nothing changed), so a change reaches every replica within
``server_policy_refresh_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from matrix_protocol.server_names import parse_server_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicySnapshot:
    """One version of the lists, as stored."""

    version: int
    allow_list_mode: bool
    blocked: tuple[str, ...]
    allowed: tuple[str, ...]


def _matcher(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regular expression matching any of ``patterns`` (globs), or None for none."""
    parts = [fnmatch.translate(p.lower()) for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


def valid_pattern(pattern: str) -> bool:
    """A pattern an operator may list: a server name shape with glob characters."""
    return (
        0 < len(pattern) <= 255 and re.fullmatch(r"[A-Za-z0-9.:\-\[\]*?!_]+", pattern) is not None
    )


class ServerPolicy:
    """The current lists of one process; :meth:`blocks` is cheap (one regex match)."""

    def __init__(self, own_server_name: str = "") -> None:
        self.own_server_name = own_server_name
        self.snapshot = PolicySnapshot(0, False, (), ())
        self._blocked: re.Pattern[str] | None = None
        self._allowed: re.Pattern[str] | None = None

    @property
    def version(self) -> int:
        return self.snapshot.version

    def update(self, snapshot: PolicySnapshot) -> None:
        if snapshot == self.snapshot:
            return
        self.snapshot = snapshot
        self._blocked = _matcher(snapshot.blocked)
        self._allowed = _matcher(snapshot.allowed)
        log.info(
            "server policy updated",
            extra={
                "version": snapshot.version,
                "blocked": len(snapshot.blocked),
                "allowed": len(snapshot.allowed),
                "allow_list_mode": snapshot.allow_list_mode,
            },
        )

    def blocks(self, server_name: str) -> bool:
        """Whether federation with ``server_name`` is refused."""
        if not (self._blocked or self.snapshot.allow_list_mode):
            return False
        name = server_name.lower()
        if name == self.own_server_name.lower():
            return False
        try:
            host = parse_server_name(name)[0]
        except ValueError:
            host = name
        candidates = (name,) if host == name else (name, host)
        if self._blocked is not None and any(self._blocked.fullmatch(c) for c in candidates):
            return True
        if self.snapshot.allow_list_mode:
            return self._allowed is None or not any(self._allowed.fullmatch(c) for c in candidates)
        return False


#: How long a part may wait for the events process at start before a failed refresh is
#: logged as a warning.
STARTUP_GRACE_SECONDS = 30.0

#: This process's copy of the lists (every federation client consults it).
SERVER_POLICY = ServerPolicy()


async def follow_server_policy(
    fetch: Callable[[int], Awaitable[PolicySnapshot | None]],
    interval: float,
    policy: ServerPolicy = SERVER_POLICY,
) -> None:
    """Keep ``policy`` current: ``fetch(known_version)`` every ``interval`` seconds
    (None: unchanged). Failures are logged and retried; the last lists stay in force."""
    failing = False
    fetched_once = False
    started = asyncio.get_running_loop().time()
    while True:
        try:
            snapshot = await fetch(policy.version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Parts start together: the events process may not serve yet. Only a failure
            # after the first success, or one that outlasts start-up, is worth a warning.
            in_startup = (
                not fetched_once
                and asyncio.get_running_loop().time() - started < STARTUP_GRACE_SECONDS
            )
            if not failing and not in_startup:
                log.warning("server policy refresh failed", extra={"error": str(exc)})
                failing = True
        else:
            if failing:
                log.info("server policy refresh works again")
            failing = False
            fetched_once = True
            if snapshot is not None:
                policy.update(snapshot)
        await asyncio.sleep(interval)


def grpc_policy_fetcher(channel: object) -> Callable[[int], Awaitable[PolicySnapshot | None]]:
    """``fetch`` for :func:`follow_server_policy` asking the events process over ``channel``."""
    from mxfed_api.events.v1 import admin_pb2, admin_pb2_grpc

    stub = admin_pb2_grpc.AdminStub(channel)

    async def fetch(known_version: int) -> PolicySnapshot | None:
        reply = await stub.QueryServerPolicy(
            admin_pb2.QueryServerPolicyRequest(known_version=known_version), timeout=10
        )
        if reply.unchanged:
            return None
        return snapshot_of(reply)

    return fetch


def snapshot_of(reply: object) -> PolicySnapshot:
    """A ``ServerPolicy`` message as a snapshot."""
    rules = list(getattr(reply, "rules", ()))
    return PolicySnapshot(
        version=int(getattr(reply, "version", 0)),
        allow_list_mode=bool(getattr(reply, "allow_list_mode", False)),
        blocked=tuple(sorted(r.pattern for r in rules if not r.allow)),
        allowed=tuple(sorted(r.pattern for r in rules if r.allow)),
    )
