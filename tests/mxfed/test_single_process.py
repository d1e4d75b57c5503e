"""``mxfed run --single-process``: every part in one process, as a user runs it."""

import json
import re
import time
import urllib.request
from pathlib import Path

import psutil

from mxfed.identity_files import parse_signing_key
from tests.support.mxfed_process import PARTS, MxfedProcess


def test_one_process_serves_every_part_and_stops_cleanly(
    tmp_path: Path, own_database_url: str
) -> None:
    mxfed = MxfedProcess(tmp_path / "data", own_database_url, single_process=True)
    try:
        mxfed.start()  # ready: the federation API answers and every part is SERVING on gRPC
        assert mxfed.process is not None
        assert psutil.Process(mxfed.process.pid).children(recursive=True) == []
        deadline = time.monotonic() + 10
        while "mxfed ready: server_name=127.0.0.1:" not in mxfed.log_tail(500):
            assert time.monotonic() < deadline, "readiness was never announced"
            time.sleep(0.1)
        # Each part keeps its metrics port.
        for part in (*PARTS, "gateway"):
            url = f"http://127.0.0.1:{mxfed.metrics_ports[part]}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert b"mxfed_" in response.read()
        # Every record names the part that wrote it.
        named = set()
        for line in mxfed.log_tail(2000).splitlines():
            if line.startswith("{"):
                named.add(json.loads(line).get("part"))
        assert {*PARTS, "gateway"} <= named
        key = parse_signing_key((mxfed.data_dir / "signing.key").read_text())
        assert mxfed.stop(keep_ports=True) == 0
        assert re.search(r'"msg":"stopped"', mxfed.log_tail(50))
        # The same data directory starts again, with the same key.
        mxfed.start()
        again = parse_signing_key((mxfed.data_dir / "signing.key").read_text())
        assert again.key_id == key.key_id
    finally:
        mxfed.stop()


def test_a_start_up_error_stops_the_process_with_one_line(
    tmp_path: Path, own_database_url: str
) -> None:
    from tests.mxfed.test_run_failures import assert_stopped_with, run_to_the_end

    mxfed = MxfedProcess(tmp_path / "data", own_database_url, single_process=True)
    try:
        # The harness holds every port (bound, not listening); without SO_REUSEPORT no
        # part can bind its own.
        mxfed.extra_config["listen_reuse_port"] = False
        line = assert_stopped_with(
            run_to_the_end(mxfed, "--single-process"), "is already in use", "listen_reuse_port"
        )
        part = line.removeprefix("mxfed: cannot start ").split(":", 1)[0]
        assert part in (*PARTS, "gateway")
    finally:
        mxfed.stop()
