"""A PostgreSQL of a test's own (pgserver, in a temporary directory), that can be restarted.

For tests that stop or restart PostgreSQL: never the shared cluster on
127.0.0.1:5432. pgserver runs the server as its own system user when we are
root, and listens on a Unix socket only; ``restart`` stops it (fast
shutdown: every session is ended, as in a failover), keeps it down for a
while, and starts it again on the same socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from mxfed.database import ensure_database


def _as_system_user(executable: str) -> Any:
    """pgserver's command ``executable``, run as its system user through ``runuser``.

    pgserver passes ``user=`` to ``subprocess.run``, which makes CPython fork (not
    vfork): gRPC's fork handlers then run in the child of a test process that has
    gRPC threads, and the child was seen to abort before its exec ("Fatal Python
    error: Aborted", pg_ctl "dying" of SIGSEGV)."""
    from pgserver._commands import POSTGRES_BIN_PATH

    def command(
        args: list[str], pgdata: Path | None = None, user: str | None = None, **options: Any
    ) -> str:
        line = [
            str(POSTGRES_BIN_PATH / executable),
            *(["-D", str(pgdata)] if pgdata else []),
            *args,
        ]
        if user is not None:
            line = ["runuser", "-u", user, "--", *line]
        # Files, not pipes: pg_ctl start leaves the server holding its output.
        with tempfile.TemporaryFile("w+") as out:
            subprocess.run(
                line, check=True, stdout=out, stderr=subprocess.STDOUT, text=True, **options
            )
            out.seek(0)
            return out.read()

    return command


class OwnPostgres:
    def __init__(self, directory: Path) -> None:
        import pgserver
        import pgserver.postgres_server

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        pgserver.postgres_server.pg_ctl = _as_system_user("pg_ctl")
        pgserver.postgres_server.initdb = _as_system_user("initdb")
        self.directory = directory / "pgdata"
        self.server: Any = pgserver.get_server(self.directory, cleanup_mode="delete")
        self.server_url: str = self.server.get_uri()

    async def database(self, name: str = "mxfed") -> str:
        """The URL of database ``name`` on this server (created if missing)."""
        return await ensure_database(self.server_url, name)

    def _pg_ctl(self, *args: str) -> None:
        _as_system_user("pg_ctl")(
            list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60
        )

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster: every session is ended), waited for.

        The postmaster is signalled directly: it needs no child process at all."""
        pid = int((self.directory / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        process.send_signal(signal.SIGINT)
        process.wait(60)

    def start(self) -> None:
        # pg_ctl start with the options the server ran with (postmaster.opts).
        options = (self.directory / "postmaster.opts").read_text().split(None, 1)
        arguments = options[1].strip() if len(options) > 1 else ""
        for attempt in range(3):
            try:
                self._pg_ctl(
                    "-w", "-o", arguments, "-l", str(self.directory / "restart.log"), "start"
                )
                return
            except subprocess.CalledProcessError:
                if attempt == 2 or self._running():
                    raise
                time.sleep(0.5)

    def _running(self) -> bool:
        path = self.directory / "postmaster.pid"
        if not path.exists():
            return False
        return psutil.pid_exists(int(path.read_text().split()[0]))

    async def restart(self, down_for: float) -> float:
        """Stop, stay down ``down_for`` seconds, start; returns the seconds it was down."""
        started = time.monotonic()
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start)
        return time.monotonic() - started

    def close(self) -> None:
        # pgserver stops only the postmaster it started; after a restart that one is gone and
        # it would delete the data directory under the running one, leaving it behind.
        if self._running():
            self.stop()
        self.server.cleanup()
