"""``mxfed run``: every part of mxfed on this machine, as supervised processes.

The supervisor prepares what the parts share (the signing key, the
database, found or embedded, checked to answer and to belong to this
server, and the TLS pair, made by a short-lived process so no resident one
carries the crypto library for it), then starts each part as its own
process, forked from a process that has imported what every part imports so
that the parts share that memory (:mod:`mxfed.part_starter`). Each part
reports on a pipe (see :mod:`mxfed.startup`) once it serves, checked through
its own socket; the supervisor says ``mxfed ready`` when every part it
started has. A part that reports a fatal start-up error (its port taken,
its database gone, ...) stops the whole run with one line and exit status
:data:`~mxfed.startup.EXIT_FATAL`; so does a part that keeps crashing
before it was ever ready. A part that crashes after it was ready is
restarted with a growing delay (logged). SIGTERM/SIGINT stop every child and
wait for it. Children get PR_SET_PDEATHSIG so that they stop even if the
supervisor itself is killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxfed.config import Config
from mxfed.database import (
    EmbeddedDatabase,
    create_pool,
    describe,
    resolve_database_url,
    wait_for_database,
    with_password,
)
from mxfed.database_claim import claim_database
from mxfed.identity_files import load_or_create_signing_key
from mxfed.internal_identity import OPERATOR, Caller
from mxfed.internal_pki import ensure_in_subprocess
from mxfed.logs import setup_logging
from mxfed.part_starter import ForkedPart, PartStarter, StarterGone, adopt_orphans
from mxfed.startup import (
    EXIT_FATAL,
    FatalReport,
    StartupError,
    parse_report,
)

log = logging.getLogger("mxfed.supervisor")

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


class Supervisor:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.children = {part: Child(part) for part in config.run}
        self.stopping = asyncio.Event()
        self.embedded: EmbeddedDatabase | None = None
        self.environment: dict[str, str] = {}
        self.database = ""
        self.fatal: FatalReport | None = None
        self.announced = False
        self.starter: PartStarter | None = None

    async def prepare(self) -> None:
        """What every part shares; a :class:`StartupError` when something is wrong with it."""
        config = self.config
        services = [part for part in config.run if part != "gateway"]
        if config.health_listen and len(services) > 1:
            raise StartupError(
                f"health_listen ({config.health_listen}) serves one service, "
                f"and this run starts {len(services)}",
                "unset health_listen, or set it per part with `mxfed run --service NAME`",
            )
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot create the data directory {config.data_dir}: {exc.strerror}",
                "set data_dir to a directory this user can write",
            ) from None
        # First run: the TLS pair and the internal certificates, each by a short-lived process.
        first_run: list[Coroutine[Any, Any, object]] = []
        if "gateway" in config.run and not (
            config.tls_certificate.exists() and config.tls_private_key.exists()
        ):
            first_run.append(self._make_tls_pair())
        if config.internal_tls:
            first_run.append(self._make_internal_certificates())
        await asyncio.gather(*first_run)
        try:
            signing_key = load_or_create_signing_key(config.signing_key)
        except (OSError, ValueError) as exc:
            raise StartupError(
                f"cannot read the signing key {config.signing_key}: {exc}",
                "fix or remove the file (signing_key_path); a new one is made when absent",
            ) from None
        url, self.embedded = await resolve_database_url(config.database_url, config.data_dir)
        connect_url = url
        if config.database_password_file:
            connect_url = with_password(url, config.database_password_file.read_text().strip())
        self.database = describe(url)
        await wait_for_database(connect_url, config.database_start_timeout)
        pool = await create_pool(connect_url, max_size=1, timed=False)
        try:
            await claim_database(pool, connect_url, config.server_name, signing_key)
        finally:
            await pool.close()
        self.environment = {
            **os.environ,
            "DATABASE_URL": url,
            "MXFED_DATA_DIR": str(config.data_dir.resolve()),
        }
        if self.config_path:
            self.environment["MXFED_CONFIG"] = str(Path(self.config_path).resolve())
        log.info(
            "prepared",
            extra={
                "server_name": config.server_name,
                "key_id": signing_key.key_id,
                "database": self.database,
                "embedded_database": self.embedded is not None,
            },
        )

    async def _make_tls_pair(self) -> None:
        """A self-signed pair, made by a short-lived process (see identity_files.main)."""
        config = self.config
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mxfed.identity_files",
            str(config.tls_certificate),
            str(config.tls_private_key),
            config.server_name,
        )
        if await process.wait() != 0:
            raise StartupError(
                f"could not generate the TLS pair {config.tls_certificate}",
                "check that the directory is writable, or set tls_certificate_path and "
                "tls_private_key_path to an existing pair",
            )
        log.info(
            "generated a self-signed TLS pair", extra={"certificate": str(config.tls_certificate)}
        )

    async def _make_internal_certificates(self) -> None:
        """The internal CA (when there is none), the parts' and the operator's certificates."""
        callers = [Caller.part(part) for part in self.config.run] + [OPERATOR]
        issued = await ensure_in_subprocess(self.config, callers)
        if issued:
            log.info(
                "issued internal TLS certificates",
                extra={
                    "identities": [str(caller) for caller in issued],
                    "directory": str(self.config.internal_tls_directory),
                },
            )

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
                f"mxfed ready: server_name={self.config.server_name}"
                + (
                    f" federation API at https://{self.config.gateway_listen}"
                    if "gateway" in self.children
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
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=child.delay)
            except TimeoutError:
                pass
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
            await asyncio.wait_for(follower, timeout=5)
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
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in running)), timeout=_STOP_TIMEOUT
            )
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

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
        adopt_orphans()
        self.starter = PartStarter(self.environment)
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children.values()]
        await self.stopping.wait()
        log.info("stopping all parts")
        await self.starter.stop()
        await self.stop_children()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._stop_embedded()
        if self.fatal is not None:
            # The part logged the error in full; this is the line a person reads.
            print(self.fatal.line(), file=sys.stderr, flush=True)
            return EXIT_FATAL
        log.info("stopped")
        return 0

    def _stop_embedded(self) -> None:
        if self.embedded:
            self.embedded.stop()
            self.embedded = None


async def supervise(config: Config, config_path: str | None) -> int:
    setup_logging("supervisor", config.log_level, config.log_format)
    return await Supervisor(config, config_path).run()
