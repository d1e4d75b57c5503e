"""The federation access log, the gateway's /health, and log records free of terminal codes."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from fastapi import APIRouter, Depends

from gateway.responses import JsonResponse
from gateway.xmatrix_auth import require_origin
from matrix_protocol.xmatrix import sign_request
from mxfed.logs import JsonFormatter
from tests.support.keys_service import OUR_SERVER, Gateway, open_gateway

router = APIRouter()


@router.put("/_matrix/federation/v1/test/echo/{thing}")
async def echo(thing: str, origin: str = Depends(require_origin)) -> JsonResponse:
    return JsonResponse({"thing": thing, "origin": origin})


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("mxfed.access")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


async def _gateway(keys_service, **options: object) -> AsyncIterator[Gateway]:
    opened, clients = await open_gateway(keys_service, router, **options)
    yield opened
    await opened.http.aclose()
    await clients.close()


@pytest.fixture
async def logged(keys_service) -> AsyncIterator[Gateway]:
    async for opened in _gateway(keys_service):
        yield opened


async def test_one_record_per_request_with_the_origin_and_route_template(
    logged: Gateway, access: Records, key_server_factory
) -> None:
    origin = await key_server_factory()
    uri = "/_matrix/federation/v1/test/echo/%21room%3Aexample.org"
    body = orjson.dumps({"hello": "world"})
    header = sign_request(
        "PUT",
        uri,
        origin.server_name,
        OUR_SERVER,
        {"hello": "world"},
        origin.signing_key,
        origin.key_id,
    )
    response = await logged.http.put(uri, content=body, headers={"Authorization": header})
    assert response.status_code == 200, response.text
    unauthenticated = await logged.http.get("/_matrix/federation/v1/nothing/here")
    assert unauthenticated.status_code == 404

    signed, unknown = access.records
    assert signed.levelno == logging.INFO and signed.getMessage() == "request"
    assert {
        key: getattr(signed, key)
        for key in ("origin", "method", "route", "status", "bytes_in", "bytes_out", "trace_id")
    } == {
        "origin": origin.server_name,
        "method": "PUT",
        "route": "/_matrix/federation/v1/test/echo/{thing}",
        "status": 200,
        "bytes_in": len(body),
        "bytes_out": len(response.content),
        "trace_id": None,
    }
    assert signed.duration_ms >= 0
    assert (unknown.origin, unknown.route, unknown.status) == (None, "unmatched", 404)


async def test_the_level_is_configurable_and_off_means_none(keys_service, access: Records) -> None:
    async for quiet in _gateway(keys_service, access_log_level="DEBUG"):
        await quiet.http.get("/_matrix/federation/v1/version")
    async for off in _gateway(keys_service, access_log_level="OFF"):
        await off.http.get("/_matrix/federation/v1/version")
    assert [record.levelno for record in access.records] == [logging.DEBUG]


async def test_health_answers_ok(logged: Gateway) -> None:
    response = await logged.http.get("/health")
    assert (response.status_code, response.text) == (200, "OK")


def test_json_records_carry_no_terminal_codes() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("uvicorn.test")
    logger.addHandler(handler)
    try:
        # What uvicorn logs: the message, and a copy with colour codes.
        logger.warning(
            "Started server process [%d]",
            42,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
        )
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "\x1b" not in line and "\\u001b" not in line
    assert orjson.loads(line)["msg"] == "Started server process [42]"
