"""``mxfed run`` as a user runs it: real processes, PostgreSQL and sockets."""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from mxfed.identity_files import parse_signing_key
from tests.support.grpc_plane import plane_settings
from tests.support.mxfed_process import PARTS, MxfedProcess
from tests.support.ports import HeldPort

pytestmark = pytest.mark.whole_stack


def _children(process: MxfedProcess) -> dict[str, psutil.Process]:
    """The supervised parts, by part name, read from their command lines."""
    assert process.process is not None
    parts = {}
    for child in psutil.Process(process.process.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:  # a killed child not yet reaped by the supervisor
            continue
        if "--service" in cmdline:
            parts[cmdline[cmdline.index("--service") + 1]] = child
    return parts


def _version(process: MxfedProcess) -> dict:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"{process.federation_url}/_matrix/federation/v1/version"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def mxfed(tmp_path: Path, own_database_url: str):
    process = MxfedProcess(tmp_path / "data", own_database_url)
    yield process
    process.stop()


def _supervised_only(mxfed: MxfedProcess) -> None:
    if mxfed.single_process:
        pytest.skip("about the supervised run's part processes (a single-process run has none)")


def test_run_starts_every_part_and_serves_the_version_over_https(mxfed: MxfedProcess) -> None:
    mxfed.start()
    assert set(_children(mxfed)) == (set() if mxfed.single_process else {*PARTS, "gateway"})
    assert _version(mxfed) == {"server": {"name": "mxfed", "version": "0.1.0"}}
    # The TLS pair was made on this first start (by a short-lived helper process).
    assert (mxfed.data_dir / "tls.crt").exists() and (mxfed.data_dir / "tls.key").exists()
    assert "generated a self-signed TLS pair" in mxfed.log_tail(500)
    # So were the internal CA and the certificates of every part and of the operator.
    internal = mxfed.data_dir / "internal"
    assert sorted(path.name for path in internal.iterdir()) == sorted(
        ["ca.crt", "ca.key", "operator", *(f"part-{part}" for part in (*PARTS, "gateway"))]
    )
    assert "issued internal TLS certificates" in mxfed.log_tail(500)
    deadline = time.monotonic() + 10
    while "mxfed ready: server_name=127.0.0.1:" not in mxfed.log_tail(500):
        assert time.monotonic() < deadline, "the supervisor never announced readiness"
        time.sleep(0.1)


def test_an_idle_keep_alive_connection_does_not_hold_the_stop(mxfed: MxfedProcess) -> None:
    """A federation peer's idle TLS connection is closed at stop, not waited out (uvicorn
    waits for the peer's close_notify, which an idle client never sends)."""
    mxfed.start()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    port = int(mxfed.federation_url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with context.wrap_socket(raw) as connection:
        connection.sendall(b"GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        # The connection stays open and idle while mxfed stops.
        assert mxfed.stop() == 0
    assert "timeout graceful shutdown exceeded" not in mxfed.log_tail(500)


def test_signing_key_id_survives_a_restart(mxfed: MxfedProcess) -> None:
    mxfed.start()
    key_file = mxfed.data_dir / "signing.key"
    first = parse_signing_key(key_file.read_text())
    assert mxfed.stop() == 0
    mxfed.start()
    second = parse_signing_key(key_file.read_text())
    assert second.key_id == first.key_id
    assert bytes(second.signing_key) == bytes(first.signing_key)


def test_a_rotated_key_is_still_this_servers_after_a_restart(mxfed: MxfedProcess) -> None:
    mxfed.start()
    key_file = mxfed.data_dir / "signing.key"
    first = parse_signing_key(key_file.read_text())
    rotated = subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "keys", "rotate", "--config", str(mxfed.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=mxfed.environment(),
    )
    assert rotated.returncode == 0, rotated.stderr
    second = parse_signing_key(key_file.read_text())
    assert second.key_id != first.key_id
    assert mxfed.stop(keep_ports=True) == 0
    mxfed.start()  # refused unless the database knows the new key as this server's


def test_a_killed_part_is_restarted_and_sigterm_leaves_no_orphans(mxfed: MxfedProcess) -> None:
    _supervised_only(mxfed)
    mxfed.start()
    before = _children(mxfed)
    victim = before["events"]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _children(mxfed)
        if "events" in after and after["events"].pid != victim.pid:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"events was not restarted:\n{mxfed.log_tail()}")
    mxfed.wait_ready()
    assert '"msg":"part exited; restarting","child":"events"' in mxfed.log_tail(200)

    everyone = list(_children(mxfed).values())
    assert mxfed.stop() == 0
    for child in everyone:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def _shared_anonymous_kib(pid: int) -> int:
    """Written (anonymous) memory this process shares with another, in KiB (proc(5) smaps)."""
    shared = 0
    anonymous = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: anonymous has no path
            anonymous = len(fields) < 6 or fields[5] in ("[heap]", "[stack]")
        elif anonymous and fields[0] == "Shared_Dirty:":
            shared += int(fields[1])
    return shared


def test_parts_share_the_memory_of_what_they_all_import(mxfed: MxfedProcess) -> None:
    """Each part is forked from the part starter, which imported what they all import:
    those pages are shared between the parts, not copied into each (an executed part
    shares no written memory with anyone). The starter is gone once every part is ready."""
    _supervised_only(mxfed)
    mxfed.start()
    parts = _children(mxfed)
    assert set(parts) == {*PARTS, "gateway"}
    for name, part in parts.items():
        assert part.cmdline() == ["mxfed", "run", "--service", name]
        assert _shared_anonymous_kib(part.pid) > 4096, name
    deadline = time.monotonic() + 30
    while any(
        "mxfed.part_starter" in child.cmdline()
        for child in psutil.Process(mxfed.process.pid).children()
    ):
        assert time.monotonic() < deadline, "the part starter stayed after every part was ready"
        time.sleep(0.1)


def test_parts_stop_when_the_supervisor_is_killed(mxfed: MxfedProcess) -> None:
    _supervised_only(mxfed)
    mxfed.start()
    parts = list(_children(mxfed).values())
    assert len(parts) == len(PARTS) + 1
    assert mxfed.process is not None
    os.kill(mxfed.process.pid, signal.SIGKILL)
    _, still_running = psutil.wait_procs(parts, timeout=30)
    assert still_running == []


def test_ctrl_c_while_the_parts_start_stops_everything_quietly(mxfed: MxfedProcess) -> None:
    """SIGINT to the whole process group (Ctrl-C in a terminal) while the part starter
    runs: the supervisor stops every part and the starter, and nothing prints a
    traceback."""
    mxfed.write_config()
    log_path = mxfed.data_dir / "mxfed.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mxfed.cli", "--config", str(mxfed.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=mxfed.environment(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while '"msg":"part started"' not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        everyone = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(60) == 0, log_path.read_text()
        _, still_running = psutil.wait_procs(everyone, timeout=30)
        assert still_running == []
        assert "Traceback" not in log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_gateway_never_reads_the_signing_key(tmp_path: Path) -> None:
    """The internet-facing part runs with no signing key: it never opens or creates one."""
    held = HeldPort()
    port = held.port
    unreachable = tmp_path / "not-here" / "signing.key"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server_name": f"127.0.0.1:{port}",
                "data_dir": str(tmp_path / "data"),
                "signing_key_path": str(unreachable),
                "gateway_listen": f"127.0.0.1:{port}",
                "gateway_metrics_listen": "127.0.0.1:0",
                "listen_reuse_port": True,
                **{key: str(value) for key, value in plane_settings().items()},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mxfed.cli", "--config", str(config), "run", "--service", "gateway"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{port}/_matrix/federation/v1/version"
        for _ in range(300):
            assert process.poll() is None, "the gateway exited"
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as response:
                    assert json.loads(response.read())["server"]["name"] == "mxfed"
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the gateway never answered")
        key_files = [
            f.path for f in psutil.Process(process.pid).open_files() if "signing" in f.path
        ]
        assert key_files == []
    finally:
        process.terminate()
        process.wait(20)
        held.release()
    # Any part that loads the key creates the file when it is missing; the gateway did not.
    assert not unreachable.exists()
