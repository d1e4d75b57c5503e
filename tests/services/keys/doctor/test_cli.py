"""``mxfed doctor`` against a keys service on a real gRPC port: the human
output, the exit status, and ``--json`` validated against the documented schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from aiohttp import web

from mxfed.cli import build_parser
from mxfed.commands.doctor import doctor
from mxfed.config import Config
from services.keys.doctor.report import Cause, Outcome, StepId
from tests.support.federation_doctor import US
from tests.support.grpc_plane import plane_settings

DOCS = Path(__file__).resolve().parents[4] / "docs"
SCHEMA = json.loads((DOCS / "doctor-report.schema.json").read_text())


def validate(document: dict) -> None:
    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = build_parser(["doctor"]).parse_args(["doctor", *argv])
    status = await doctor(args, Config(server_name=US, **plane_settings()))
    return status, capsys.readouterr().out


async def test_json_report_follows_the_schema(capsys, doctor_service, federation_servers) -> None:
    server = await federation_servers(port_in_name=True)
    server.notary_keys[US] = await doctor_service.under_test.our_signed_keys()
    address = doctor_service.address
    status, out = await run_cli(capsys, server.server_name, "--json", "--address", address)
    document = json.loads(out)
    validate(document)
    assert status == 0
    assert document["verdict"] == {
        "outcome": "pass",
        "cause": None,
        "step": None,
        "summary": f"federation with {server.server_name} works (9 checks passed)",
        "other_causes": [],
    }
    assert [step["step"] for step in document["steps"]][-3:] == [
        "reaches_us",
        "delivery",
        "room_acl",
    ]


async def test_a_failure_is_printed_step_by_step(
    capsys, doctor_service, federation_servers, refused_port
) -> None:
    server = await federation_servers("fed.test", "delegated.fed.test")
    doctor_service.under_test.well_known_port = server.port
    doctor_service.under_test.dns.hosts["delegated.fed.test"] = ["127.0.0.1"]
    doctor_service.reload()
    address = doctor_service.address
    port = refused_port

    async def delegate(request: web.Request) -> web.StreamResponse:
        return web.json_response({"m.server": f"delegated.fed.test:{port}"})

    server.well_known = delegate
    status, out = await run_cli(capsys, "fed.test", "--address", address)
    status_json, out_json = await run_cli(capsys, "fed.test", "--json", "--address", address)

    lines = out.splitlines()
    assert lines[0] == "mxfed doctor: federation with fed.test"
    assert re.fullmatch(
        rf"  PASS  well known +[0-9.]+ ms  fed.test delegates to delegated.fed.test:{port}",
        lines[2],
    )
    assert re.fullmatch(
        rf"  FAIL  tls +[0-9.]+ ms  \[connection_refused\] 127.0.0.1:{port}: connection refused",
        lines[6],
    )
    assert lines[-1] == (
        f"verdict: FAIL (connection_refused) at tls: 127.0.0.1:{port}: connection refused"
    )
    assert status == status_json == 2
    document = json.loads(out_json)
    validate(document)
    assert document["verdict"]["step"] == "tls"


async def test_a_keys_service_that_does_not_answer(capsys, refused_port) -> None:
    address = f"127.0.0.1:{refused_port}"
    args = build_parser(["doctor"]).parse_args(["doctor", "--address", address])
    status = await doctor(args, Config(server_name=US, **plane_settings()))
    assert status == 3
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_the_docs_name_every_step_and_cause() -> None:
    text = (DOCS / "doctor.md").read_text()
    for name in [*(step.value for step in StepId), *(cause.value for cause in Cause)]:
        assert f"`{name}`" in text, name
    assert SCHEMA["$defs"]["cause"]["enum"] == [cause.value for cause in Cause]
    assert SCHEMA["$defs"]["step_id"]["enum"] == [step.value for step in StepId]
    assert SCHEMA["$defs"]["outcome"]["enum"] == [outcome.value for outcome in Outcome]
