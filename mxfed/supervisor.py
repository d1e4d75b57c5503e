"""``mxfed run``: every part of mxfed on this machine, as supervised processes.

The supervisor prepares what the parts share (the signing key, the
database, found or embedded, and the TLS pair, made by a short-lived
process so no resident one carries the crypto library for it), starts
each part as its own process, restarts a part that exits unexpectedly (with
a growing delay, logged), reports when the federation API answers, and on
SIGTERM/SIGINT stops every child and waits for it. Children get
PR_SET_PDEATHSIG so that they stop even if the supervisor itself is killed.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mxfed.config import Config
from mxfed.database import EmbeddedDatabase, resolve_database_url
from mxfed.identity_files import load_or_create_signing_key
from mxfed.logs import setup_logging

log = logging.getLogger("mxfed.supervisor")

_PR_SET_PDEATHSIG = 1
_MIN_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 30.0
_STABLE_AFTER = 60.0
_STOP_TIMEOUT = 10.0


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    part: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = _MIN_RESTART_DELAY
    pids: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.children = {part: Child(part) for part in config.run}
        self.stopping = asyncio.Event()
        self.embedded: EmbeddedDatabase | None = None
        self.environment: dict[str, str] = {}

    async def prepare(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if "gateway" in config.run and not (
            config.tls_certificate.exists() and config.tls_private_key.exists()
        ):
            await self._make_tls_pair()
        signing_key = load_or_create_signing_key(config.signing_key)
        url, self.embedded = await resolve_database_url(config.database_url, config.data_dir)
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
                "database": "embedded" if self.embedded else "external",
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
            raise RuntimeError("could not generate the TLS certificate and key")
        log.info(
            "generated a self-signed TLS pair", extra={"certificate": str(config.tls_certificate)}
        )

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mxfed.cli",
            "run",
            "--service",
            child.part,
            env=self.environment,
            preexec_fn=_die_with_parent,
        )
        child.started_at = time.monotonic()
        child.pids.append(child.process.pid)
        log.info("part started", extra={"child": child.part, "pid": child.process.pid})

    async def _watch(self, child: Child) -> None:
        while not self.stopping.is_set():
            await self._spawn(child)
            assert child.process is not None
            code = await child.process.wait()
            if self.stopping.is_set():
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

    async def _announce_when_ready(self) -> None:
        if "gateway" not in self.config.run:
            return
        host, port = self.config.gateway_listen.rsplit(":", 1)
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        url = f"https://{host}:{port}/_matrix/federation/v1/version"
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, context=insecure, timeout=2):
                    return True
            except OSError:
                return False

        # urllib in a thread rather than an HTTP client library: the supervisor
        # stays small (it is one of six resident processes).
        while not self.stopping.is_set() and not await asyncio.to_thread(answers):  # noqa: ASYNC110
            await asyncio.sleep(0.3)
        if not self.stopping.is_set():
            print(
                f"mxfed ready: server_name={self.config.server_name} "
                f"federation API at https://{self.config.gateway_listen}",
                flush=True,
            )
            log.info("ready", extra={"federation_api": url})

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

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        await self.prepare()
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children.values()]
        announcer = asyncio.create_task(self._announce_when_ready())
        await self.stopping.wait()
        log.info("stopping all parts")
        announcer.cancel()
        await self.stop_children()
        await asyncio.gather(*watchers, announcer, return_exceptions=True)
        if self.embedded:
            self.embedded.stop()
        log.info("stopped")


async def supervise(config: Config, config_path: str | None) -> None:
    setup_logging("supervisor", config.log_level, config.log_format)
    await Supervisor(config, config_path).run()
