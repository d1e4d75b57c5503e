"""``Keys.QueryFederationReport`` over a real gRPC socket: steps stream as they
finish, then the whole report; the enums on the wire match the report's names."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
import pytest

from mxfed.internal_plane import OPERATOR
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from services.keys.doctor.report import Cause, Outcome, StepId
from tests.support.grpc_plane import channel_to


@pytest.fixture
async def doctor_stub(doctor_service) -> AsyncIterator[keys_pb2_grpc.KeysStub]:
    async with channel_to(doctor_service.address, "keys", OPERATOR) as channel:
        yield keys_pb2_grpc.KeysStub(channel)


@pytest.mark.parametrize(
    ("python_enum", "proto_enum", "prefix", "extra"),
    [
        (Outcome, keys_pb2.DiagnosisOutcome, "DIAGNOSIS_OUTCOME_", {"UNSPECIFIED"}),
        (StepId, keys_pb2.DiagnosisStep, "DIAGNOSIS_STEP_", {"UNSPECIFIED"}),
        (Cause, keys_pb2.DiagnosisCause, "DIAGNOSIS_CAUSE_", {"UNSPECIFIED"}),
    ],
)
def test_the_wire_enums_are_the_report_names(python_enum, proto_enum, prefix, extra) -> None:
    on_the_wire = {name.removeprefix(prefix) for name in proto_enum.DESCRIPTOR.values_by_name}
    assert on_the_wire - extra == {member.name for member in python_enum}
    assert all(member.value == member.name.lower() for member in python_enum)


async def test_steps_stream_then_the_report(doctor_stub, federation_servers) -> None:
    server = await federation_servers(port_in_name=True)
    items = [
        item
        async for item in doctor_stub.QueryFederationReport(
            keys_pb2.QueryFederationReportRequest(server_name=server.server_name), timeout=60
        )
    ]
    *steps, last = items
    assert all(item.WhichOneof("item") == "step" for item in steps)
    assert last.WhichOneof("item") == "report"
    report = last.report
    assert list(report.steps) == [item.step for item in steps]
    assert report.server_name == server.server_name
    assert not report.own_server and report.checked_by == "doctor.test"
    names = [keys_pb2.DiagnosisStep.Name(step.step) for step in report.steps]
    assert names[:3] == [
        "DIAGNOSIS_STEP_SERVER_NAME",
        "DIAGNOSIS_STEP_WELL_KNOWN",
        "DIAGNOSIS_STEP_SRV",
    ]
    tls = next(step for step in report.steps if step.step == keys_pb2.DIAGNOSIS_STEP_TLS)
    assert tls.outcome == keys_pb2.DIAGNOSIS_OUTCOME_PASS
    assert orjson.loads(tls.details_json)["addresses"][0]["trusted"] is True
    # Nothing fetched our keys on that server: it cannot reach us.
    assert report.verdict.outcome == keys_pb2.DIAGNOSIS_OUTCOME_FAIL
    assert report.verdict.cause == keys_pb2.DIAGNOSIS_CAUSE_CANNOT_REACH_US
    assert report.verdict.step == keys_pb2.DIAGNOSIS_STEP_REACHES_US
    assert report.verdict.summary.startswith("reaches_us: it could not fetch our keys")
    assert report.duration_us >= sum(step.duration_us for step in report.steps)


async def test_room_acls_are_for_remote_servers(doctor_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in doctor_stub.QueryFederationReport(
            keys_pb2.QueryFederationReportRequest(room_ids=["!a:doctor.test"]), timeout=10
        ):
            pass
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
