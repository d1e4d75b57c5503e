"""``Keys.QueryFederationReport``: a diagnosis as a stream of steps, then the report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import orjson

from mxfed.clock import now_ms
from mxfed.service_errors import BadRequest, abort
from mxfed_api.keys.v1 import keys_pb2
from services.keys.doctor.diagnosis import FederationDoctor
from services.keys.doctor.report import Cause, Outcome, StepId, StepResult, verdict_of

log = logging.getLogger(__name__)

#: Diagnoses running at once in one keys process; more wait their turn.
CONCURRENT_DIAGNOSES = 4


def outcome_pb(outcome: Outcome) -> keys_pb2.DiagnosisOutcome:
    return keys_pb2.DiagnosisOutcome.Value(f"DIAGNOSIS_OUTCOME_{outcome.name}")


def step_pb(step: StepId | None) -> keys_pb2.DiagnosisStep:
    name = step.name if step is not None else "UNSPECIFIED"
    return keys_pb2.DiagnosisStep.Value(f"DIAGNOSIS_STEP_{name}")


def cause_pb(cause: Cause | None) -> keys_pb2.DiagnosisCause:
    name = cause.name if cause is not None else "UNSPECIFIED"
    return keys_pb2.DiagnosisCause.Value(f"DIAGNOSIS_CAUSE_{name}")


def step_result_pb(result: StepResult) -> keys_pb2.DiagnosisStepResult:
    return keys_pb2.DiagnosisStepResult(
        step=step_pb(result.step),
        outcome=outcome_pb(result.outcome),
        cause=cause_pb(result.cause),
        summary=result.summary,
        duration_us=int(result.seconds * 1_000_000),
        details_json=orjson.dumps(result.details),
    )


class DoctorRpc:
    def __init__(self, doctor: FederationDoctor) -> None:
        self.doctor = doctor
        self._running = asyncio.Semaphore(CONCURRENT_DIAGNOSES)

    async def query_federation_report(
        self,
        request: keys_pb2.QueryFederationReportRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[keys_pb2.QueryFederationReportResponse]:
        target = request.server_name or self.doctor.server_name
        if target == self.doctor.server_name and request.room_ids:
            await abort(
                context, BadRequest("room ACLs are checked for a remote server, not our own")
            )
        async with self._running:
            started_ts = now_ms()
            started = time.perf_counter()
            steps: list[StepResult] = []
            async for result in self.doctor.diagnose(target, list(request.room_ids)):
                steps.append(result)
                yield keys_pb2.QueryFederationReportResponse(step=step_result_pb(result))
            verdict = verdict_of(target, steps)
            log.info(
                "federation diagnosis",
                extra={
                    "server": target,
                    "outcome": verdict.outcome.value,
                    "cause": verdict.cause.value if verdict.cause else None,
                },
            )
            yield keys_pb2.QueryFederationReportResponse(
                report=keys_pb2.FederationReport(
                    server_name=target,
                    own_server=target == self.doctor.server_name,
                    checked_by=self.doctor.server_name,
                    started_ts=started_ts,
                    duration_us=int((time.perf_counter() - started) * 1_000_000),
                    steps=[step_result_pb(step) for step in steps],
                    verdict=keys_pb2.FederationVerdict(
                        outcome=outcome_pb(verdict.outcome),
                        cause=cause_pb(verdict.cause),
                        step=step_pb(verdict.step),
                        summary=verdict.summary,
                        other_causes=[cause_pb(cause) for cause in verdict.other_causes],
                    ),
                )
            )
