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

Once prepared, the supervisor goes on as :mod:`mxfed.supervision`, executed
in the same process, which loads none of what the preparation needed (the
configuration model, the database driver); with an embedded database it
supervises in this process instead, which holds the database's handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
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
from mxfed.startup import EXIT_FATAL, StartupError
from mxfed.supervision import PLAN_ENV, Supervision

log = logging.getLogger("mxfed.supervisor")


class Supervisor(Supervision):
    """Prepares what the parts share, then supervises them (:class:`Supervision`)."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        super().__init__(
            list(config.run),
            config.server_name,
            config.gateway_listen if "gateway" in config.run else None,
        )
        self.config = config
        self.config_path = config_path
        self.embedded: EmbeddedDatabase | None = None

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

    async def run(self) -> int:
        self.handle_signals()
        try:
            await self.prepare()
        except StartupError as exc:
            print(exc.line(), file=sys.stderr, flush=True)
            self._stop_embedded()
            return EXIT_FATAL
        if self.embedded is None and not self.stopping.is_set():
            self._continue_lean()
        # An embedded database is stopped through its handle, which lives in this process.
        await self.supervise()
        self._stop_embedded()
        return self.outcome()

    def _continue_lean(self) -> None:
        """Go on as :mod:`mxfed.supervision` in this process; never returns."""
        plan = self.plan(self.config.log_level, self.config.log_format)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(
            sys.executable,
            [sys.executable, "-m", "mxfed.supervision"],
            {**self.environment, PLAN_ENV: plan},
        )

    def _stop_embedded(self) -> None:
        if self.embedded:
            self.embedded.stop()
            self.embedded = None


async def supervise(config: Config, config_path: str | None) -> int:
    setup_logging("supervisor", config.log_level, config.log_format)
    return await Supervisor(config, config_path).run()
