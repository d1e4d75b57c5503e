"""Starts the parts of ``mxfed run`` by fork, from one process that has imported
what every part imports, so that the parts share those pages instead of each
holding its own copy.

A Python part spends most of its memory before its own code runs: the
objects the interpreter makes for gRPC, protobuf, asyncpg, pydantic, the
config model and mxfed's runtime (about 35 MiB per part when each imports
them itself). The part starter (``python -m mxfed.part_starter``) imports
them once; a part forked from it shares them copy-on-write, and only the
pages it writes to, and what it imports for itself afterwards, become its
own. Objects made at import are moved out of the garbage collector's sight
first (:func:`gc.freeze`), so that collections in a part do not write to
every shared page. Nothing here may start a thread, an event loop, a gRPC
channel or server, or a database connection before the fork: a part makes
those itself, after it, as a part run alone does.

The supervisor (:class:`PartStarter`) sends one request per part on a Unix
socket (the part's name, with the part's report pipe attached) and reads
back the part's process id. The part is forked through a middle process
that exits at once, so that it becomes the supervisor's own child (the
supervisor is a child subreaper, :func:`adopt_orphans`): the supervisor
reaps it, signals it and restarts it as any process it started, and the
part dies with the supervisor (PR_SET_PDEATHSIG), not with the starter.
The supervisor stops the starter once every part is ready (its own memory
is then freed; the parts keep what they share) and starts it again to
restart a part.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)

# What every part imports at start: the command line, the service runtime
# with its gRPC, database and metrics libraries, the federation client and the
# events API. The gateway's web framework and each service's own modules are
# imported by the part, after the fork.
PRELOADED = (
    "mxfed.cli",
    "mxfed.commands.run",
    "mxfed.service_runtime",
    "mxfed.federation_client.from_config",
    "mxfed_api.events.v1.events_pb2_grpc",
)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PART_NAME_LIMIT = 32
# A part exits with this if its supervisor died before the part could follow it.
_EXIT_ORPHANED = 1
_REPLY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


# The supervisor's side.


def adopt_orphans() -> None:
    """Become the parent of descendants whose own parent exits (the forked parts)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


class StarterGone(Exception):
    """The part starter did not start a part: it exited, or could not start."""


class ForkedPart:
    """A part forked by the part starter, with what the supervisor uses of an
    :class:`asyncio.subprocess.Process`. It is the supervisor's child (see
    :func:`adopt_orphans`), reaped by a thread of its own as asyncio reaps the
    processes it starts."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(target=self._reap, args=(loop,), name=f"reap-{pid}", daemon=True).start()

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        _, status = os.waitpid(self.pid, 0)
        loop.call_soon_threadsafe(self._on_exit, os.waitstatus_to_exitcode(status))

    def _on_exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class PartStarter:
    """The supervisor's end of the part starter, started when a part is to be started."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.process: asyncio.subprocess.Process | None = None
        self.channel: socket.socket | None = None
        self._lock = asyncio.Lock()

    async def start_part(self, part: str, report_fd: int) -> ForkedPart:
        """``part``, forked with ``report_fd`` as its report pipe; StarterGone if it was not."""
        async with self._lock:
            if self.process is None or self.process.returncode is not None:
                await self._stop()
                await self._start()
            assert self.channel is not None
            try:
                # One short request at a time: the socket's buffer has room for it.
                socket.send_fds(self.channel, [part.encode()], [report_fd])
                async with asyncio.timeout(_REPLY_TIMEOUT):
                    pid = await self._read_pid(self.channel)
            except (OSError, TimeoutError, StarterGone) as exc:
                await self._stop()
                raise StarterGone(str(exc) or type(exc).__name__) from exc
            return ForkedPart(pid)

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mxfed.part_starter",
                str(theirs.fileno()),
                env=self.environment,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.channel = ours
        log.info("part starter started", extra={"pid": self.process.pid})

    @staticmethod
    async def _read_pid(channel: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = await loop.sock_recv(channel, 32)
            if not chunk:
                raise StarterGone("the part starter exited")
            reply += chunk
        return int(reply)

    async def stop(self) -> None:
        """Stop the starter (the parts it started go on); started again when needed."""
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        if self.channel is not None:
            self.channel.close()  # the starter exits when its end reads nothing more
            self.channel = None
        process, self.process = self.process, None
        if process is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


# The part starter's side (``python -m mxfed.part_starter FD``).


def main() -> int:
    channel = socket.socket(fileno=int(sys.argv[1]))
    supervisor = os.getppid()
    # Ctrl-C reaches the whole process group; the supervisor stops the starter
    # (it closes the socket) and each part.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        return _EXIT_ORPHANED
    for module in PRELOADED:
        importlib.import_module(module)
    # What import made lives as long as the process: keep the collector off it.
    gc.collect()
    gc.freeze()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, _PART_NAME_LIMIT, 1)
        except ConnectionError:
            return 0
        if not message:
            return 0  # the supervisor closed its end
        try:
            pid = _fork_part(message.decode(), fds[0], channel, supervisor)
        finally:
            for fd in fds:
                os.close(fd)
        channel.sendall(f"{pid}\n".encode())


def _fork_part(part: str, report_fd: int, channel: socket.socket, supervisor: int) -> int:
    """Fork ``part`` through a middle process that exits at once; the part's process id."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            middle = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                _become_part(part, report_fd, channel, supervisor, middle)
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        pid = int(reader.read())
    # The part's parent is the supervisor once the middle process has exited.
    os.waitpid(middle, 0)
    return pid


def _become_part(
    part: str, report_fd: int, channel: socket.socket, supervisor: int, middle: int
) -> None:
    """Run ``mxfed run --service part`` in this forked process; never returns."""
    code = 1
    try:
        channel.close()
        # The death signal must be set once the kernel has moved this process
        # to the supervisor: the middle process's exit would deliver it.
        while os.getppid() == middle:
            time.sleep(0.001)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:
            os._exit(_EXIT_ORPHANED)
        from mxfed import cli
        from mxfed.startup import SUPERVISOR_FD_ENV

        _set_command_line(f"mxfed run --service {part}")
        os.environ[SUPERVISOR_FD_ENV] = str(report_fd)
        sys.argv = [cli.__file__, "run", "--service", part]
        # SIGINT stays ignored (from the starter) until the part's own handlers
        # replace it: Ctrl-C reaches the whole process group, the supervisor stops
        # each part with SIGTERM, and a KeyboardInterrupt raised while asyncio
        # builds the part's loop would leave a half-made loop that prints a
        # traceback when collected.
        code = cli.main(["run", "--service", part])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        # What the interpreter does at exit, then os._exit: the starter's own
        # loop must never resume in this process.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _set_command_line(title: str) -> None:
    """What ``ps`` and ``/proc/PID/cmdline`` show for this process (``mxfed run
    --service keys``) instead of the starter's command line it was forked with.

    The kernel reads a process's command line from the memory its arguments
    were passed in, so the title is written there, as setproctitle does: the
    title, a NUL, and a last byte that is not NUL, which tells the kernel to
    read up to the first NUL (proc(5), /proc/pid/cmdline). Python keeps its
    own copies of its arguments and never reads that memory again. Only the
    arguments' own room is used, not the environment after it: a longer title
    is cut.
    """
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # proc(5): arg_start and arg_end are fields 48 and 49; fields[0] is field 3.
    start, end = int(fields[45]), int(fields[46])
    room = end - start
    if start == 0 or room < 3:
        return
    text = title.encode()[: room - 2]
    ctypes.memmove(start, text + b"\0" * (room - len(text) - 1) + b" ", room)


if __name__ == "__main__":
    sys.exit(main())
