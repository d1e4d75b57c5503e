"""``mxfed run`` that cannot start stops with one line and status 78, never ready, no loop.

Each case runs ``mxfed run`` to its end as a user would (real processes,
PostgreSQL and sockets) and checks the outcome's shape: the exit status,
the one plain line on stderr (every other line is a JSON log record), no
"ready" on stdout, each part started at most once and never restarted.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import orjson
import pytest

from mxfed.database import with_database_name
from mxfed.startup import EXIT_FATAL
from tests.support.mxfed_process import PARTS, MxfedProcess

pytestmark = pytest.mark.whole_stack

# A hang guard, not a measure: these runs end in a few seconds.
GUARD = 90


def run_to_the_end(process: MxfedProcess, *args: str) -> subprocess.CompletedProcess[str]:
    process.write_config()
    return subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "run", "--config", str(process.config_path), *args],
        capture_output=True,
        text=True,
        timeout=GUARD,
        env=process.environment(),
    )


def plain_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


def records(stderr: str) -> list[dict]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def assert_stopped_with(outcome: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert outcome.returncode == EXIT_FATAL, outcome.stderr
    assert "ready" not in outcome.stdout
    lines = plain_lines(outcome.stderr)
    assert len(lines) == 1, outcome.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    started = [r["child"] for r in records(outcome.stderr) if r["msg"] == "part started"]
    assert len(started) == len(set(started)), "a part was started twice"
    assert not [r for r in records(outcome.stderr) if r["msg"] == "part exited; restarting"]
    return lines[0]


@pytest.fixture
def mxfed(tmp_path: Path, own_database_url: str):
    process = MxfedProcess(tmp_path / "data", own_database_url)
    yield process
    process.stop()


def test_a_missing_database(mxfed: MxfedProcess) -> None:
    mxfed.database_url = with_database_name(mxfed.database_url, "mxfed_no_such_database")
    line = assert_stopped_with(
        run_to_the_end(mxfed), 'database "mxfed_no_such_database" does not exist', "createdb"
    )
    assert line.startswith("mxfed: cannot start: ")


def test_a_database_that_does_not_answer(mxfed: MxfedProcess, refused_port: int) -> None:
    mxfed.database_url = f"postgresql://postgres@127.0.0.1:{refused_port}/mxfed"
    mxfed.extra_config["database_start_timeout"] = 1
    assert_stopped_with(
        run_to_the_end(mxfed), f"127.0.0.1:{refused_port}", "did not answer within 1 s"
    )


def test_ports_taken_by_another_program(mxfed: MxfedProcess) -> None:
    # The harness holds every port (bound without listening); without SO_REUSEPORT a
    # part cannot bind it, as beside any program that listens there.
    mxfed.extra_config["listen_reuse_port"] = False
    line = assert_stopped_with(run_to_the_end(mxfed), "is already in use", "listen_reuse_port")
    part = line.removeprefix("mxfed: cannot start ").split(":", 1)[0]
    assert part in (*PARTS, "gateway")
    assert f"({part}_listen)" in line or f"({part}_metrics_listen)" in line


def test_a_second_mxfed_beside_a_running_one(mxfed: MxfedProcess, tmp_path: Path) -> None:
    mxfed.start()
    second = MxfedProcess(mxfed.data_dir, mxfed.database_url)
    second.ports, second.metrics_ports = mxfed.ports, mxfed.metrics_ports
    second.server_name = mxfed.server_name
    second.extra_config["listen_reuse_port"] = False
    try:
        second.data_dir = tmp_path / "second"
        second.data_dir.mkdir()
        for name in ("signing.key", "tls.crt", "tls.key"):
            (second.data_dir / name).write_bytes((mxfed.data_dir / name).read_bytes())
        assert_stopped_with(run_to_the_end(second), "is already in use")
        # The running one is unharmed, and the second left no sender replica behind.
        mxfed.wait_ready(timeout=30)
        live = asyncio.run(_sender_replicas(mxfed.database_url))
        assert len(live) == 1, live
    finally:
        second.stop()


async def _sender_replicas(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT instance_id FROM sender.replicas")
    finally:
        await connection.close()
    return [row["instance_id"] for row in rows]


def test_an_address_of_no_interface_here(mxfed: MxfedProcess) -> None:
    mxfed.extra_config["gateway_listen"] = "192.0.2.1:8448"  # TEST-NET-1, on no machine
    assert_stopped_with(
        run_to_the_end(mxfed),
        "cannot start gateway: 192.0.2.1:8448 (gateway_listen)",
        "no network interface",
    )


def test_a_bad_listen_address_is_a_configuration_error(mxfed: MxfedProcess) -> None:
    mxfed.extra_config["gateway_listen"] = "garbage"
    outcome = run_to_the_end(mxfed)
    assert outcome.returncode == EXIT_FATAL
    assert outcome.stdout == ""
    assert plain_lines(outcome.stderr) == [
        "mxfed: configuration error: gateway_listen: 'garbage' is not host:port"
        " (e.g. 127.0.0.1:8448 or [::1]:8448)"
    ]


def test_a_database_that_belongs_to_another_server(mxfed: MxfedProcess, tmp_path: Path) -> None:
    mxfed.start()
    mxfed.stop(keep_ports=True)
    other = MxfedProcess(tmp_path / "other", mxfed.database_url, server_name="other.example")
    try:
        assert_stopped_with(
            run_to_the_end(other),
            f"belongs to the server '{mxfed.server_name}', not 'other.example'",
            "its own database",
        )
        # Same name, another signing key: refused too.
        same_name = MxfedProcess(
            tmp_path / "same-name", mxfed.database_url, server_name=mxfed.server_name
        )
        try:
            assert_stopped_with(
                run_to_the_end(same_name), "the signing key", "is not one the server"
            )
        finally:
            same_name.stop()
    finally:
        other.stop()


def test_a_part_alone_reports_on_stderr_and_leaves_no_heartbeat(
    mxfed: MxfedProcess, tmp_path: Path
) -> None:
    asyncio.run(_prepare_sender_tables(mxfed))
    mxfed.extra_config["listen_reuse_port"] = False
    outcome = run_to_the_end(mxfed, "--service", "sender")
    assert outcome.returncode == EXIT_FATAL
    assert plain_lines(outcome.stderr) == [
        f"mxfed: cannot start sender: 127.0.0.1:{mxfed.ports['sender']} (sender_listen) is "
        "already in use: another mxfed or another program listens there; stop it, or set "
        "sender_listen to a free address (listen_reuse_port: true shares a port on purpose)"
    ]
    assert asyncio.run(_sender_replicas(mxfed.database_url)) == []


async def _prepare_sender_tables(mxfed: MxfedProcess) -> None:
    """The sender's tables exist (as after any earlier start), so 'no row' means something."""
    from mxfed.database import apply_migrations, create_pool
    from mxfed.service_runtime import migrations_directory

    pool = await create_pool(mxfed.database_url, max_size=1)
    try:
        await apply_migrations(pool, "sender", migrations_directory("sender"))
    finally:
        await pool.close()
