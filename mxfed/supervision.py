"""The supervision loop of ``mxfed run``: start every part, follow its reports,
restart it when it crashes, stop them all.

Apart from the preparation (:mod:`mxfed.supervisor`), which needs the
configuration model, the database driver and the signing key: once that is
done, the supervisor executes this module in its own process (``python -m
mxfed.supervision``: the same process id and standard streams, no child yet),
so that the process resident for the whole run carries none of them. What
the loop needs to know comes in the environment (:data:`PLAN_ENV`), taken
out before the parts are started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from mxfed.logs import setup_logging
from mxfed.part_starter import ForkedPart, PartStarter, StarterGone, adopt_orphans
from mxfed.startup import EXIT_FATAL, FatalReport, parse_report
from mxfed.waits import event_set_within

log = logging.getLogger("mxfed.supervisor")

PLAN_ENV = "MXFED_SUPERVISION_PLAN"

_MIN_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 30.0
_STABLE_AFTER = 60.0
_STOP_TIMEOUT = 10.0
# A part that crashed this many times in a row without ever being ready is
# not going to start: stop rather than loop.
_CRASHES_BEFORE_GIVING_UP = 5


@dataclass
class Child:
    part: str
    process: ForkedPart | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = _MIN_RESTART_DELAY
    ready: bool = False
    ever_ready: bool = False
    crashes_before_ready: int = 0
    pids: list[int] = field(default_factory=list)


class Supervision:
    """Every part of one run, each started, watched and restarted on its own."""

    def __init__(self, parts: list[str], server_name: str, federation_address: str | None) -> None:
        self.children = {part: Child(part) for part in parts}
        self.server_name = server_name
        # Where the federation API listens, named in the ready line (when the gateway runs).
        self.federation_address = federation_address
        self.stopping = asyncio.Event()
        self.environment: dict[str, str] = {}
        self.database = ""
        self.fatal: FatalReport | None = None
        self.announced = False
        self.starter: PartStarter | None = None

    def plan(self, log_level: str, log_format: str) -> str:
        """What :func:`main` needs to go on with this supervision in a new program."""
        return json.dumps(
            {
                "parts": list(self.children),
                "server_name": self.server_name,
                "federation_address": self.federation_address,
                "database": self.database,
                "log_level": log_level,
                "log_format": log_format,
            }
        )

    def handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)

    async def run(self) -> int:
        self.handle_signals()
        await self.supervise()
        return self.outcome()

    async def supervise(self) -> None:
        """Run every part until a stop is asked for or a part cannot start."""
        adopt_orphans()
        self.starter = PartStarter(self.environment)
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children.values()]
        await self.stopping.wait()
        log.info("stopping all parts")
        await self.starter.stop()
        await self.stop_children()
        await asyncio.gather(*watchers, return_exceptions=True)

    def outcome(self) -> int:
        """The run's exit status, once every part has stopped."""
        if self.fatal is not None:
            # The part logged the error in full; this is the line a person reads.
            print(self.fatal.line(), file=sys.stderr, flush=True)
            return EXIT_FATAL
        log.info("stopped")
        return 0

    async def _spawn(self, child: Child) -> asyncio.StreamReader:
        assert self.starter is not None
        read_end, write_end = os.pipe()
        try:
            child.process = await self.starter.start_part(child.part, write_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        reports = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reports), os.fdopen(read_end, "rb", 0)
        )
        child.started_at = time.monotonic()
        child.pids.append(child.process.pid)
        log.info("part started", extra={"child": child.part, "pid": child.process.pid})
        return reports

    async def _follow_reports(self, child: Child, reports: asyncio.StreamReader) -> None:
        while line := await reports.readline():
            report = parse_report(child.part, line)
            if report is True:
                self._on_ready(child)
                if self.starter is not None and all(c.ready for c in self.children.values()):
                    # Nothing to start until a part exits: its memory is better freed.
                    await self.starter.stop()
            elif isinstance(report, FatalReport):
                self._on_fatal(report)

    def _on_ready(self, child: Child) -> None:
        child.ready = child.ever_ready = True
        child.crashes_before_ready = 0
        if self.announced:
            log.info("part ready again", extra={"child": child.part})
            return
        if all(c.ready for c in self.children.values()):
            self.announced = True
            print(
                f"mxfed ready: server_name={self.server_name}"
                + (
                    f" federation API at https://{self.federation_address}"
                    if self.federation_address
                    else ""
                )
                + f" database {self.database}",
                flush=True,
            )
            log.info("ready", extra={"parts": list(self.children)})

    def _on_fatal(self, report: FatalReport) -> None:
        if self.fatal is None:
            self.fatal = report
        self.stopping.set()

    async def _watch(self, child: Child) -> None:
        while not self.stopping.is_set():
            code = await self._run_once(child)
            if self.stopping.is_set():
                return
            if code == EXIT_FATAL:
                self._on_fatal(
                    FatalReport(
                        child.part,
                        f"it stopped with a start-up error (exit status {code})",
                        "see its log above",
                    )
                )
                return
            if not child.ever_ready:
                child.crashes_before_ready += 1
                if child.crashes_before_ready >= _CRASHES_BEFORE_GIVING_UP:
                    self._on_fatal(
                        FatalReport(
                            child.part,
                            f"it crashed {child.crashes_before_ready} times in a row before "
                            f"it was ever ready (last exit status {code})",
                            "see its log above",
                        )
                    )
                    return
            if time.monotonic() - child.started_at > _STABLE_AFTER:
                child.delay = _MIN_RESTART_DELAY
            child.restarts += 1
            log.warning(
                "part exited; restarting",
                extra={
                    "child": child.part,
                    "exit_code": code,
                    "restart": child.restarts,
                    "delay_s": child.delay,
                },
            )
            await event_set_within(self.stopping, child.delay)
            child.delay = min(child.delay * 2, _MAX_RESTART_DELAY)

    async def _run_once(self, child: Child) -> int:
        """Start ``child`` and follow it until it exits; its exit status."""
        try:
            reports = await self._spawn(child)
        except StarterGone as exc:
            log.error("could not start the part", extra={"child": child.part, "error": str(exc)})
            return 1  # counted as a crash: restarted after the delay, or given up on
        assert child.process is not None
        follower = asyncio.create_task(self._follow_reports(child, reports))
        code = await child.process.wait()
        # The pipe ends with the process: every report is read.
        try:
            async with asyncio.timeout(5):
                await follower
        except TimeoutError:
            follower.cancel()
        child.ready = False
        return code

    async def stop_children(self) -> None:
        running = [
            c.process for c in self.children.values() if c.process and c.process.returncode is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


def main() -> int:
    plan = json.loads(os.environ.pop(PLAN_ENV))
    setup_logging("supervisor", plan["log_level"], plan["log_format"])
    supervision = Supervision(plan["parts"], plan["server_name"], plan["federation_address"])
    supervision.database = plan["database"]
    supervision.environment = dict(os.environ)
    return asyncio.run(supervision.run())


if __name__ == "__main__":
    sys.exit(main())
