"""``mxfed doctor [SERVER]``: why federation with a server does or does not work.

Asks the keys service (``Keys.QueryFederationReport``), which runs the checks
with the federation client and key machinery it holds, and prints each step
as it finishes: outcome, time taken, the cause when it is not a pass, and
what was found. Without SERVER it checks our own server as the world finds it.

``--json`` prints one JSON document instead, in the stable format of
docs/doctor.md (schema: docs/doctor-report.schema.json), for monitoring.

Exit status: 0 every check passed, 1 a warning, 2 a failure, 3 the checks
could not be run (the keys service did not answer).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

import orjson

from mxfed.client import Client, MatrixError
from mxfed.commands.client_commands import error_line
from mxfed.config import Config
from mxfed.internal_plane import client_address
from mxfed_api.keys.v1 import keys_pb2

#: A diagnosis waits for remote servers (well-known, TLS, a key fetch the
#: remote makes from us): minutes at worst, never unbounded.
CALL_TIMEOUT = 300.0
SCHEMA_VERSION = 1

EXIT_CODES = {"pass": 0, "warn": 1, "fail": 2}
EXIT_NOT_RUN = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="tell why federation with a server does or does not work"
    )
    parser.add_argument(
        "server", nargs="?", default="", help="the server name to check (default: our own)"
    )
    parser.add_argument(
        "--room",
        action="append",
        default=[],
        dest="rooms",
        metavar="ROOM_ID",
        help="also check this room's server ACL against SERVER (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--address", help="keys service host:port (default: keys_address)")
    parser.set_defaults(handler=doctor)


def _enum_name(wrapper: Any, value: int, prefix: str) -> str | None:
    name: str = wrapper.Name(value).removeprefix(prefix)
    return None if name == "UNSPECIFIED" else name.lower()


def outcome_name(value: int) -> str:
    return _enum_name(keys_pb2.DiagnosisOutcome, value, "DIAGNOSIS_OUTCOME_") or "skip"


def step_name(value: int) -> str | None:
    return _enum_name(keys_pb2.DiagnosisStep, value, "DIAGNOSIS_STEP_")


def cause_name(value: int) -> str | None:
    return _enum_name(keys_pb2.DiagnosisCause, value, "DIAGNOSIS_CAUSE_")


def step_json(step: keys_pb2.DiagnosisStepResult) -> dict[str, Any]:
    return {
        "step": step_name(step.step),
        "outcome": outcome_name(step.outcome),
        "cause": cause_name(step.cause),
        "summary": step.summary,
        "duration_ms": round(step.duration_us / 1000, 1),
        "details": orjson.loads(step.details_json) if step.details_json else {},
    }


def report_json(report: keys_pb2.FederationReport) -> dict[str, Any]:
    """The report in the documented, stable JSON format (docs/doctor.md)."""
    started = datetime.datetime.fromtimestamp(report.started_ts / 1000, datetime.UTC)
    verdict = report.verdict
    return {
        "schema_version": SCHEMA_VERSION,
        "server_name": report.server_name,
        "own_server": report.own_server,
        "checked_by": report.checked_by,
        "started_at": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "duration_ms": round(report.duration_us / 1000, 1),
        "steps": [step_json(step) for step in report.steps],
        "verdict": {
            "outcome": outcome_name(verdict.outcome),
            "cause": cause_name(verdict.cause),
            "step": step_name(verdict.step),
            "summary": verdict.summary,
            "other_causes": [cause_name(cause) for cause in verdict.other_causes],
        },
    }


def format_step(step: keys_pb2.DiagnosisStepResult) -> str:
    label = outcome_name(step.outcome).upper()
    name = (step_name(step.step) or "?").replace("_", " ")
    cause = cause_name(step.cause)
    because = f"[{cause}] " if cause else ""
    return f"  {label:<4}  {name:<12} {step.duration_us / 1000:>8.1f} ms  {because}{step.summary}"


def format_verdict(report: keys_pb2.FederationReport) -> str:
    verdict = report.verdict
    outcome = outcome_name(verdict.outcome).upper()
    if verdict.outcome == keys_pb2.DIAGNOSIS_OUTCOME_PASS:
        return f"verdict: {outcome}: {verdict.summary}"
    return f"verdict: {outcome} ({cause_name(verdict.cause)}) at {verdict.summary}"


def _address(args: argparse.Namespace, config: Config) -> str:
    return client_address(args.address or config.service_address("keys"))


async def doctor(args: argparse.Namespace, config: Config) -> int:
    request = keys_pb2.QueryFederationReportRequest(server_name=args.server, room_ids=args.rooms)
    report: keys_pb2.FederationReport | None = None
    if not args.json:
        checked = args.server or f"{config.server_name} (our own server)"
        print(f"mxfed doctor: federation with {checked}", flush=True)
    addresses = {"keys": args.address} if args.address else {}
    async with Client(config, addresses=addresses) as client:
        try:
            async for item in client.operator.federation_report(
                request.server_name, request.room_ids, deadline=CALL_TIMEOUT
            ):
                if item.WhichOneof("item") == "report":
                    report = item.report
                elif not args.json:
                    print(format_step(item.step), flush=True)
        except MatrixError as exc:
            line = error_line(exc, config, _address(args, config))
            print(f"mxfed doctor: {line}", file=sys.stderr)
            return EXIT_NOT_RUN
    if report is None:
        print("mxfed doctor: the keys service sent no report", file=sys.stderr)
        return EXIT_NOT_RUN
    if args.json:
        print(orjson.dumps(report_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_verdict(report))
    return EXIT_CODES[outcome_name(report.verdict.outcome)]
