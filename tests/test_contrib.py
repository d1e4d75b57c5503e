"""contrib/: the alert rules pass promtool, and every metric the dashboard and the
rules use is exported by a running mxfed (renaming a metric fails here)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.support.databases import create_database, drop_database
from tests.support.mxfed_process import PARTS, MxfedProcess

pytestmark = pytest.mark.whole_stack

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
RULES = CONTRIB / "prometheus" / "alerts.yml"
DASHBOARD = CONTRIB / "grafana" / "mxfed.json"

# PromQL words that look like metric names.
_PROMQL = {
    "sum", "rate", "increase", "changes", "deriv", "max", "min", "by", "and", "or", "unless",
    "histogram_quantile", "le", "instance", "job", "method", "code", "result", "task",
    "outcome", "status", "destination", "room_id", "kind",
}  # fmt: skip
_NAME = re.compile(r"\b([a-z_][a-z0-9_]*)\b(?!\s*[=~!]|\s*\()")


def _expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


def used_metrics() -> set[str]:
    names = set()
    for expr in _expressions():
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
        bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", bare)
        for name in _NAME.findall(bare):
            if name not in _PROMQL and "_" in name:
                names.add(name)
    return names


def test_the_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("MXFED_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    outcome = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert "SUCCESS" in outcome.stdout


def test_the_parser_sees_the_metrics() -> None:
    used = used_metrics()
    assert {
        "mxfed_sender_queued_pdus",
        "mxfed_db_pool_in_use",
        "process_start_time_seconds",
    } <= used
    assert not used & _PROMQL


def _exported(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MxfedProcess]:
    database_url = await create_database("mxfed_contrib_test")
    mxfed = MxfedProcess(tmp_path_factory.mktemp("contrib") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
        yield mxfed
    finally:
        await asyncio.to_thread(mxfed.stop)
        await drop_database(database_url)


async def test_every_metric_the_dashboard_and_rules_use_is_exported(
    running: MxfedProcess,
) -> None:
    exported: set[str] = set()
    for part in ("gateway", *running.parts):
        port = running.metrics_ports[part]
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda u=url: urllib.request.urlopen(u, timeout=10).read())
        names = _exported(body.decode())
        # Every part measures its event loop and its internal calls.
        assert {"mxfed_event_loop_lag_seconds", "mxfed_grpc_client_handled_total"} <= names, part
        exported |= names
    missing = used_metrics() - exported
    assert missing == set()


async def test_top_shows_every_part_serving(running: MxfedProcess) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mxfed.cli",
        "--config",
        str(running.config_path),
        "top",
        "--once",
        "--json",
        "--interval",
        "0.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    view = json.loads(out)
    assert {p["part"] for p in view["parts"]} == {"gateway", *PARTS}
    assert {p["health"] for p in view["parts"]} == {"SERVING"}
    assert all(p["db_size"] >= 1 for p in view["parts"] if p["part"] != "gateway")
    assert view["inbound_backlog"] == 0
