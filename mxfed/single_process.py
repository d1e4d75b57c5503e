"""``mxfed run --single-process``: every part in one process, on one event loop.

For a small deployment (one machine, little traffic) where one process is
worth more than the isolation and restarts of :mod:`mxfed.supervisor`. The
parts are the same code and still call each other over gRPC on the internal
plane (mutual TLS as configured), each on its own configured port, with its
own database pool, gRPC health and metrics port; only the processes are
merged. What differs from the supervised run:

- a part that fails is not restarted: the whole process stops (exit status
  :data:`~mxfed.startup.EXIT_FATAL` for a start-up error, 1 for a crash), for
  the service manager to restart;
- every metrics port serves the one process's metrics (the counters of every
  part; a process-wide gauge such as ``mxfed_serving`` or the database pool's
  shows one of the parts);
- log records name their part as usual (:data:`mxfed.logs.CURRENT_PART`), and so do
  trace spans (service name ``mxfed-<part>``);
- one copy of the server block and allow lists serves every part (each part's
  follower refreshes it; the first to see a change logs it).

Preparation (signing key, TLS pair, internal certificates, the database
found or embedded and claimed) is the supervisor's, so the data directory
is the same either way and a server can move between the two modes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from mxfed import startup
from mxfed.config import Config
from mxfed.logs import CURRENT_PART, setup_logging
from mxfed.startup import EXIT_FATAL, FatalReport, StartupError
from mxfed.supervisor import Supervisor

log = logging.getLogger("mxfed.single_process")

# Seconds every part gets to stop after SIGTERM before its task is cancelled.
_STOP_TIMEOUT = 15.0


class SingleProcess(Supervisor):
    """The supervisor's preparation, then every part as a task of this process."""

    async def _run_part(
        self, part: str, stop: asyncio.Event, services_ready: asyncio.Event
    ) -> None:
        CURRENT_PART.set(part)
        config = self.config.model_copy(
            update={"database_url": self.environment.get("DATABASE_URL")}
        )
        if part == "gateway":
            from gateway.server import run_gateway

            # Once every service serves: the gateway's channels would otherwise try a
            # service before it listens and answer "unavailable" until their reconnect
            # backoff ends, although the server has said it is ready.
            waits = [asyncio.create_task(services_ready.wait()), asyncio.create_task(stop.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if not stop.is_set():
                await run_gateway(config, stop)
        else:
            from mxfed.service_runtime import run_service

            await run_service(part, config, stop)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            await self.prepare()
        except StartupError as exc:
            print(exc.line(), file=sys.stderr, flush=True)
            self._stop_embedded()
            return EXIT_FATAL
        services_ready = asyncio.Event()
        services = [part for part in self.children if part != "gateway"]

        def on_ready(part: str) -> None:
            self._on_ready(self.children[part])
            if all(self.children[service].ready for service in services):
                services_ready.set()

        if not services:
            services_ready.set()
        startup.in_process_ready = on_ready
        parts = {
            asyncio.create_task(
                self._run_part(part, self.stopping, services_ready), name=part
            ): part
            for part in self.children
        }
        status = 0
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            pending = set(parts)
            while not self.stopping.is_set():
                await asyncio.wait({*pending, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in [task for task in pending if task.done()]:
                    pending.discard(task)
                    status = max(status, self._ended(parts[task], task))
                    self.stopping.set()
            log.info("stopping all parts")
            if pending:
                _, late = await asyncio.wait(pending, timeout=_STOP_TIMEOUT)
                for task in late:
                    log.warning("part did not stop in time", extra={"child": parts[task]})
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for task in pending - late:
                    status = max(status, self._ended(parts[task], task, stopping=True))
        finally:
            startup.in_process_ready = None
            stopping.cancel()
            self._stop_embedded()
        if self.fatal is not None:
            print(self.fatal.line(), file=sys.stderr, flush=True)
            return EXIT_FATAL
        if status == 0:
            log.info("stopped")
        return status

    def _ended(self, part: str, task: asyncio.Task[None], *, stopping: bool = False) -> int:
        """The exit status a part's end calls for (0: it stopped when asked)."""
        exc = task.exception() if not task.cancelled() else None
        if isinstance(exc, StartupError):
            log.critical("cannot start", extra={"child": part, "cause": exc.cause, "fix": exc.fix})
            if self.fatal is None:
                self.fatal = FatalReport(part, exc.cause, exc.fix)
            return EXIT_FATAL
        if exc is not None:
            log.critical("part crashed", exc_info=exc, extra={"child": part})
            return 1
        if stopping or task.cancelled():
            return 0
        log.critical("part stopped on its own", extra={"child": part})
        return 1


async def run_single_process(config: Config, config_path: str | None) -> int:
    setup_logging("mxfed", config.log_level, config.log_format)
    return await SingleProcess(config, config_path).run()
