"""Runs a whole mxfed (``mxfed run``) as a child process, on free loopback ports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from mxfed.config import Config, load_config
from mxfed.internal_plane import Caller, open_channel
from tests.support.grpc_plane import AdmittedCallerChannel
from tests.support.ports import HeldPort

# The service processes of a default mxfed (accounts is served by keys: accounts_in_keys).
PARTS = ("keys", "events", "sender", "backfill", "media")


# The marker of a test module whose whole mxfed runs in either mode: the suite's second
# pass (``MXFED_TEST_SINGLE_PROCESS=1 ... -m whole_stack``, .ci/run) runs these modules
# again against ``mxfed run --single-process``.
WHOLE_STACK = "whole_stack"
# The test being set up or run (tests/conftest.py sets it before the test's fixtures).
running_test: Any = None


def single_process_by_default() -> bool:
    """Whether a whole mxfed started by a test runs as one process unless the test says
    otherwise (``MXFED_TEST_SINGLE_PROCESS=1``: the small-deployment mode's pass)."""
    return os.environ.get("MXFED_TEST_SINGLE_PROCESS") == "1"


@dataclass
class MxfedProcess:
    data_dir: Path
    database_url: str
    server_name: str = ""
    extra_config: dict = field(default_factory=dict)
    # Every part in the one process (``mxfed run --single-process``); None: as the pass
    # says (:func:`single_process_by_default`), for a test marked WHOLE_STACK.
    single_process: bool | None = None
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    _log_start: int = field(default=0, repr=False)  # where this start's log begins

    def __post_init__(self) -> None:
        self.mode_given = self.single_process is not None
        if self.single_process is None:
            self.single_process = single_process_by_default()
        # Held until release(): a restarted mxfed listens on the same ports, and
        # nothing else can take them in between (its parts bind with SO_REUSEPORT).
        names = ("gateway", *PARTS, "accounts")
        self._held = {(name, kind): HeldPort() for name in names for kind in ("api", "metrics")}
        self.ports = {name: self._held[(name, "api")].port for name in names}
        self.metrics_ports = {name: self._held[(name, "metrics")].port for name in names}
        self.server_name = self.server_name or f"127.0.0.1:{self.ports['gateway']}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mxfed.yaml"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['gateway']}"

    @property
    def accounts_apart(self) -> bool:
        """Accounts runs as its own process (``accounts_in_keys: false``)."""
        return self.extra_config.get("accounts_in_keys") is False

    @property
    def parts(self) -> tuple[str, ...]:
        """The service processes this mxfed runs."""
        return (*PARTS, "accounts") if self.accounts_apart else PARTS

    def grpc_address(self, service: str) -> str:
        if service == "accounts" and not self.accounts_apart:
            service = "keys"  # the keys process serves accounts
        return f"127.0.0.1:{self.ports[service]}"

    def config(self) -> Config:
        """This mxfed's configuration, as its processes read it."""
        return load_config(self.config_path, environ={})

    def channel(
        self, service: str, caller: Caller | None = None, address: str | None = None
    ) -> grpc.aio.Channel:
        """A channel from ``caller`` to this mxfed's ``service`` (or its replica at ``address``).

        Without a ``caller``, each call goes as a caller admitted to its method
        (``tests.support.grpc_plane.AdmittedCallerChannel``).
        """
        address = address or self.grpc_address(service)
        if caller is None:
            return AdmittedCallerChannel(self.config(), service, address)
        return open_channel(self.config(), service, caller=caller, address=address)

    def _check_marked(self) -> None:
        """A test that leaves the mode to the pass must be marked, or the single-process
        pass (which selects by the marker) would silently leave it out."""
        test = running_test
        if self.mode_given or test is None or test.get_closest_marker(WHOLE_STACK):
            return
        raise AssertionError(
            f"{test.nodeid} starts a whole mxfed: mark its module "
            f"pytest.mark.{WHOLE_STACK}, or give single_process"
        )

    def write_config(self) -> None:
        config = {
            "server_name": self.server_name,
            "data_dir": str(self.data_dir),
            "database_url": self.database_url,
            "log_format": "json",
            "federation_verify_tls": False,
            "federation_allowed_ip_ranges": ["127.0.0.0/8", "::1/128"],
            "listen_reuse_port": True,
            # Tests run two at a time against one PostgreSQL (max_connections 100 by
            # default): a few connections per part are plenty for test loads.
            "database_pool_size": 4,
            **{f"{name}_listen": f"127.0.0.1:{port}" for name, port in self.ports.items()},
            **{
                f"{name}_metrics_listen": f"127.0.0.1:{port}"
                for name, port in self.metrics_ports.items()
            },
            **self.extra_config,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config))

    def environment(self) -> dict[str, str]:
        """This process's environment without mxfed settings: the config file decides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
        env.pop("DATABASE_URL", None)
        return env

    def start(self, timeout: float = 60.0) -> None:
        self._check_marked()
        self.write_config()
        log = open(self.data_dir / "mxfed.log", "ab")
        self._log_start = log.tell()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mxfed.cli",
                "--config",
                str(self.config_path),
                "run",
                *(["--single-process"] if self.single_process else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"mxfed exited early:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(
                    f"{self.federation_url}/_matrix/federation/v1/version",
                    context=context,
                    timeout=2,
                )
                # The supervisor's own announcement too: it waits for the gateway's
                # channels to the services, which a test's first request needs.
                if self._announced() and self._services_ready():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"mxfed not ready in {timeout}s:\n{self.log_tail()}")

    def _announced(self) -> bool:
        with open(self.data_dir / "mxfed.log", "rb") as log:
            log.seek(self._log_start)
            return b"mxfed ready" in log.read()

    def _services_ready(self) -> bool:
        # In a thread of its own: the caller may be running an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._services_serving()).result()

    async def _services_serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        for service in self.parts:
            async with self.channel(service) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return False
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
        return True

    def log_tail(self, lines: int = 60) -> str:
        path = self.data_dir / "mxfed.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0, *, keep_ports: bool = False) -> int | None:
        """SIGTERM (SIGKILL to the group after ``timeout``); the ports are let go
        unless ``keep_ports`` (for a restart on the same ports)."""
        try:
            return self._stop_process(timeout)
        finally:
            if not keep_ports:
                for held in self._held.values():
                    held.release()

    def _stop_process(self, timeout: float) -> int | None:
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
