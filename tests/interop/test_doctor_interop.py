"""``mxfed doctor`` end to end: the CLI, a whole running mxfed, and a real Synapse.

Synapse serves a certificate from a test CA that mxfed trusts
(``federation_ca_file``, with ``federation_verify_tls`` on), so TLS is
checked as it would be between public servers. The CA file also holds
mxfed's own self-signed certificate, so the own-server checks verify it too;
Synapse is mxfed's trusted key server (notary).

The tests run in file order: the last one stops Synapse.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from synapse_harness import SynapseServer

from mxfed.identity_files import ensure_tls_pair
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.mxfed_process import MxfedProcess
from tests.support.pki import TestCa

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "doctor-report.schema.json").read_text()
)


class CaSignedSynapse(SynapseServer):
    """A Synapse whose federation certificate (for 127.0.0.1) comes from ``ca``."""

    def __init__(self, ca: TestCa) -> None:
        super().__init__()
        self.ca = ca

    def _prepare(self) -> None:
        super()._prepare()
        issued = self.ca.issue("127.0.0.1")
        shutil.copyfile(issued.cert_file, self.tls_cert_path)
        shutil.copyfile(issued.key_file, self._require_dir() / "tls.key")


class Stack:
    def __init__(self, mxfed: MxfedProcess, synapse: CaSignedSynapse) -> None:
        self.mxfed = mxfed
        self.synapse = synapse

    def doctor(self, *argv: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "mxfed.cli", "--config", str(self.mxfed.config_path), "doctor"]
            + list(argv),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode in (0, 1, 2), done.stderr
        return done.returncode, done.stdout

    def doctor_json(self, *argv: str) -> tuple[int, dict[str, Any]]:
        status, out = self.doctor(*argv, "--json")
        report = json.loads(out)
        jsonschema.Draft202012Validator(
            SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(report)
        return status, report


def steps_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in report["steps"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("doctor-interop")
    ca = TestCa(base / "ca")
    synapse = CaSignedSynapse(ca)
    synapse.start()
    database_url = asyncio.run(create_database("mxfed_doctor_interop"))
    mxfed = MxfedProcess(base / "data", database_url)
    ensure_tls_pair(mxfed.data_dir / "tls.crt", mxfed.data_dir / "tls.key", mxfed.server_name)
    trusted = base / "trusted.pem"
    trusted.write_bytes(ca.ca_file.read_bytes() + (mxfed.data_dir / "tls.crt").read_bytes())
    mxfed.extra_config = {
        "federation_verify_tls": True,
        "federation_ca_file": str(trusted),
        "trusted_key_servers": [
            {
                "server_name": synapse.server_name,
                "verify_keys": {synapse.signing_key_id: synapse.verify_key_base64},
            }
        ],
    }
    try:
        mxfed.start()
        yield Stack(mxfed, synapse)
    finally:
        mxfed.stop()
        synapse.stop()
        asyncio.run(drop_database(database_url))


def test_our_own_server_passes_every_check(stack: Stack) -> None:
    assert stack.synapse.running  # our notary
    status, report = stack.doctor_json()
    steps = steps_of(report)
    assert report["own_server"] and report["server_name"] == stack.mxfed.server_name
    assert {name: step["outcome"] for name, step in steps.items()} == {
        "server_name": "pass",
        "well_known": "skip",  # an IP address is never delegated
        "srv": "skip",
        "discovery": "pass",
        "addresses": "pass",
        "tls": "pass",
        "version": "pass",
        "server_keys": "pass",
        "notaries": "pass",
    }, report["steps"]
    assert status == 0 and report["verdict"]["outcome"] == "pass"
    assert steps["addresses"]["details"]["addresses"][0]["allowed_by"] == "127.0.0.0/8"
    assert steps["version"]["details"]["server"]["name"] == "mxfed"
    assert steps["notaries"]["details"]["notaries"] == [
        {
            "server_name": stack.synapse.server_name,
            "outcome": "pass",
            "key_ids": sorted(steps["server_keys"]["details"]["verify_keys"]),
        }
    ]


def test_synapse_passes_then_its_acl_and_its_outage_are_named(stack: Stack) -> None:
    synapse = stack.synapse.server_name

    # 1. Up: every step passes, with TLS verified against the test CA.
    status, report = stack.doctor_json(synapse)
    steps = steps_of(report)
    assert {name: step["outcome"] for name, step in steps.items()} == {
        "server_name": "pass",
        "well_known": "skip",
        "srv": "skip",
        "discovery": "pass",
        "addresses": "pass",
        "tls": "pass",
        "version": "pass",
        "clock": "pass",
        "server_keys": "pass",
        "reaches_us": "pass",
        "delivery": "pass",
        "room_acl": "skip",
    }, report["steps"]
    assert status == 0 and report["verdict"]["outcome"] == "pass"
    assert steps["version"]["details"]["server"]["name"] == "Synapse"
    assert steps["tls"]["details"]["addresses"][0]["trusted"] is True
    assert list(steps["server_keys"]["details"]["verify_keys"]) == [stack.synapse.signing_key_id]
    assert steps["reaches_us"]["summary"].startswith("it fetched our keys")

    # The human output says the same, step by step.
    status, out = stack.doctor(synapse)
    assert status == 0
    assert (
        out.splitlines()[-1] == f"verdict: PASS: federation with {synapse} works (9 checks passed)"
    )

    # 2. A room whose server ACL shuts out IP-literal servers.
    room_id = asyncio.run(create_room_with_acl(stack.mxfed))
    status, report = stack.doctor_json(synapse, "--room", room_id)
    acl = steps_of(report)["room_acl"]
    assert (acl["outcome"], acl["cause"]) == ("fail", "acl_denied")
    assert acl["details"]["rooms"][0]["acl"]["allow_ip_literals"] is False
    assert status == 2

    # 3. Synapse stops; its port stays closed (we hold it, bound but not listening).
    port = stack.synapse.fed_port
    stack.synapse.stop()
    with socket.socket() as closed:
        closed.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        closed.bind(("127.0.0.1", port))
        asyncio.run(queue_edu_and_wait_for_a_failure(stack.mxfed, synapse))
        status, report = stack.doctor_json(synapse)
    steps = steps_of(report)
    assert (steps["tls"]["outcome"], steps["tls"]["cause"]) == ("fail", "connection_refused")
    assert steps["tls"]["summary"] == f"127.0.0.1:{port}: connection refused"
    assert steps["addresses"]["outcome"] == "pass"
    for later in ("version", "clock", "server_keys", "reaches_us"):
        assert steps[later]["outcome"] == "skip"
    delivery = steps["delivery"]
    assert (delivery["outcome"], delivery["cause"]) == ("warn", "backed_off")
    assert delivery["details"]["pending_edus"] >= 1 and delivery["details"]["failures"] >= 1
    assert report["verdict"]["step"] == "tls"
    assert report["verdict"]["cause"] == "connection_refused"
    assert report["verdict"]["other_causes"] == ["backed_off"]
    assert status == 2


async def create_room_with_acl(mxfed: MxfedProcess) -> str:
    acl = {"allow": ["*"], "deny": [], "allow_ip_literals": False}
    async with mxfed.channel("events") as channel:
        reply = await events_pb2_grpc.EventsStub(channel).PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(
                creator=f"@doctor:{mxfed.server_name}",
                preset="public_chat",
                initial_state_json=orjson.dumps(
                    [{"type": "m.room.server_acl", "state_key": "", "content": acl}]
                ),
            ),
            timeout=30,
        )
    return reply.room_id


async def queue_edu_and_wait_for_a_failure(mxfed: MxfedProcess, destination: str) -> None:
    async with mxfed.channel("sender") as channel:
        sender = sender_pb2_grpc.SenderStub(channel)
        await sender.PerformSendEdus(
            sender_pb2.PerformSendEdusRequest(
                edus=[
                    sender_pb2.Edu(
                        edu_type="org.mxfed.doctor.test",
                        content_json=b"{}",
                        destinations=[destination],
                    )
                ]
            ),
            timeout=10,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reply = await sender.QueryDestinations(
                sender_pb2.QueryDestinationsRequest(destinations=[destination], include_idle=True),
                timeout=10,
            )
            if any(info.failures for info in reply.destinations):
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"the sender never failed to reach {destination}")
