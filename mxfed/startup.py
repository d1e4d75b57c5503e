"""Start-up outcomes of a part: ready, or a fatal error that a restart would not cure.

A part started by ``mxfed run`` tells the supervisor how its start went on a
pipe whose descriptor it finds in ``MXFED_SUPERVISOR_FD``: one line
``ready`` once it serves (checked through its own socket), or one line
``fatal {"cause": ..., "fix": ...}`` before it exits with :data:`EXIT_FATAL`.
The supervisor then stops every part and prints one line instead of
restarting the part in a loop. A part run alone (compose, Kubernetes)
prints that line on stderr and exits with the same code; any other exit is
a crash, and crashes are restarted.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import orjson

log = logging.getLogger(__name__)

# sysexits.h EX_CONFIG: "something was found in an unconfigured or misconfigured state".
EXIT_FATAL = 78
SUPERVISOR_FD_ENV = "MXFED_SUPERVISOR_FD"


class StartupError(Exception):
    """A part cannot start, and starting it again the same way will fail the same way."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def line(self, part: str | None = None) -> str:
        """The one line a person reads: what stopped which part, and what to do."""
        subject = f"cannot start {part}" if part else "cannot start"
        return f"mxfed: {subject}: {self.cause}; {self.fix}"


@dataclass(frozen=True)
class FatalReport:
    part: str
    cause: str
    fix: str

    def line(self) -> str:
        return StartupError(self.cause, self.fix).line(self.part)


def _supervisor_pipe() -> int | None:
    value = os.environ.get(SUPERVISOR_FD_ENV)
    if not value or not value.isdigit():
        return None
    fd = int(value)
    try:
        # Only this process reports: whatever it starts must not hold the pipe open.
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd


def _tell_supervisor(message: bytes) -> bool:
    fd = _supervisor_pipe()
    if fd is None:
        return False
    try:
        os.write(fd, message + b"\n")
    except OSError:
        return False  # the supervisor is gone; PDEATHSIG stops us anyway
    return True


# Told the part's name when a part in this process is ready (``mxfed run --single-process``).
in_process_ready: Callable[[str], None] | None = None


def report_ready(part: str) -> None:
    log.info("ready", extra={"supervised": _supervisor_pipe() is not None})
    _tell_supervisor(b"ready")
    if in_process_ready is not None:
        in_process_ready(part)


def report_fatal(part: str, error: StartupError) -> None:
    """Log the error, then tell the supervisor or, when there is none, print the line."""
    log.critical("cannot start", extra={"cause": error.cause, "fix": error.fix})
    payload = orjson.dumps({"cause": error.cause, "fix": error.fix})
    if not _tell_supervisor(b"fatal " + payload):
        print(error.line(part), file=sys.stderr, flush=True)


def parse_report(part: str, line: bytes) -> FatalReport | bool | None:
    """A line from a part: True for ready, a :class:`FatalReport`, or None (not ours)."""
    word, _, rest = line.strip().partition(b" ")
    if word == b"ready":
        return True
    if word == b"fatal":
        try:
            fields = orjson.loads(rest)
            return FatalReport(part, str(fields["cause"]), str(fields["fix"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return FatalReport(part, rest.decode(errors="replace"), "see its log above")
    return None


# Causes and fixes shared by every part ------------------------------------------


def listen_failure(exc: OSError, address: str, option: str) -> StartupError:
    """Why binding ``address`` (from ``option``) failed, and what to change."""
    where = f"{address} ({option})"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"{where} is already in use: another mxfed or another program listens there",
            f"stop it, or set {option} to a free address "
            "(listen_reuse_port: true shares a port on purpose)",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{where}: no network interface of this machine has that address",
            f"set {option} to an address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"{where}: permission denied",
            f"use a port above 1023 in {option}, or grant the process CAP_NET_BIND_SERVICE",
        )
    if isinstance(exc, socket.gaierror):
        return StartupError(
            f"{where}: the host name does not resolve ({exc.strerror})",
            f"set {option} to an IP address or a resolvable host name",
        )
    return StartupError(f"cannot listen on {where}: {exc.strerror or exc}", f"check {option}")
