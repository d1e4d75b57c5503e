"""A sweep of every gateway route with bad input: never a 5xx, always a Matrix error body.

Developer guide: "Bad input gets a Matrix error (``errcode``, ``error``) with
the right HTTP status, never a 500 and never lost data." The routes are
taken from ``gateway.app.create_app(config).routes``, so a new route is
swept without touching this file. Each route gets, signed with a valid
X-Matrix header by a FakeHomeserver that has a member in a real room:

* every path parameter replaced by garbage, empty, over-long, percent-encoded
  nonsense, unknown ids and ids of the wrong sigil (the others valid);
* query strings with the usual parameters missing, repeated, not integers,
  negative, huge;
* for PUT/POST: bodies that are not JSON, JSON of the wrong type, objects with
  every known field of a wrong type, deep nesting, huge strings and numbers,
  and PDUs with fields missing or wrong, or the wrong room version;
* unauthenticated: no header, a garbage header;
* and hypothesis-generated path segments and JSON bodies.

Every answer must be below 500, and every non-2xx answer a JSON object with
string ``errcode`` and ``error``.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from gateway.app import create_app
from matrix_protocol.canonical_json import encode_json
from mxfed.config import load_config
from tests.support.scene import Room, Scene, start_scene, stop_scene

pytestmark = pytest.mark.whole_stack

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")

# Path parameter values, already percent-encoded as they go on the wire.
GARBAGE_SEGMENTS = [
    "garbage",
    "",
    quote("!" + "a" * 300 + ":example.org", safe=""),
    quote("$" + "b" * 300, safe=""),
    quote("@" + "c" * 300 + ":example.org", safe=""),
    "x" * 2000,
    "%ZZ",
    "%00",
    "a%00b",
    "%FF%FE",
    "%C3%28",
    "%ED%A0%80",
    "%25",
    "%2F..%2F..",
    "..",
    quote("☃", safe=""),
    quote("!unknown:example.org", safe=""),
    quote("$unknownevent", safe=""),
    quote("$unknown:example.org", safe=""),
    quote("@nobody:example.org", safe=""),
    quote("#alias:example.org", safe=""),
    quote("!", safe=""),
    quote("@", safe=""),
    quote("@:", safe=""),
    quote(":", safe=""),
    "%20",
]

QUERY_NAMES = [
    "limit",
    "v",
    "ver",
    "event_id",
    "ts",
    "dir",
    "minimum_valid_until_ts",
    "suggested_only",
    "omit_members",
    "room_alias",
    "user_id",
    "field",
    "access_token",
    "include_all_networks",
    "since",
    "third_party_instance_id",
    "timeout_ms",
    "width",
    "height",
    "method",
    "animated",
]

BAD_QUERY_VALUES = [
    "",
    "abc",
    "-1",
    "-99999999999999999999999",
    "99999999999999999999999",
    "9223372036854775808",
    "1.5",
    "1e400",
    "0x10",
    "%20%201",
    "%00",
    "%FF",
    "a" * 300,
    quote("!unknown:example.org", safe=""),
    quote("@nobody:example.org", safe=""),
    quote("#a:b", safe=""),
]

BODY_FIELDS = [
    "origin",
    "origin_server_ts",
    "pdus",
    "edus",
    "earliest_events",
    "latest_events",
    "limit",
    "min_depth",
    "room_version",
    "event",
    "invite_room_state",
    "unsigned",
    "server_keys",
    "device_keys",
    "one_time_keys",
    "since",
    "filter",
    "include_all_networks",
    "third_party_instance_id",
    "medium",
    "address",
    "mxid",
    "invites",
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "signed",
    "depth",
    "prev_events",
    "auth_events",
    "hashes",
    "signatures",
]

WRONG_VALUES: list[Any] = [
    None,
    "s",
    "",
    0,
    -1,
    1.5,
    -(10**30),
    10**30,
    2**63,
    True,
    [],
    [None],
    [1, "x", {}],
    {},
    {"a": None},
    "x" * 70_000,
    "\x00",
    ["\x00", "$a\x00b"],
    {"\x00": {}},
    {"@a\x00:example.org": []},
    "@" + "u" * 300 + ":example.org",
]


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


# (raw body, content to sign or _UNSIGNED) pairs.
_UNSIGNED = object()
RAW_BODIES: list[tuple[bytes, Any]] = [
    (b"not json", _UNSIGNED),
    (b"{", _UNSIGNED),
    (b"\xff\xfe\x00", _UNSIGNED),
    (b"NaN", _UNSIGNED),
    (b'{"limit": NaN}', _UNSIGNED),
    (b'{"limit": 1e400}', _UNSIGNED),
    (b'"\\ud800"', _UNSIGNED),
    (b"[" * 100_000, _UNSIGNED),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, _UNSIGNED),
    # A long digit run takes the exact-integer parser; deeply nested with it.
    (b"[" * 5_000 + b"1" + b"0" * 40 + b"]" * 5_000, _UNSIGNED),
    (b"null", _UNSIGNED),
    (b"   ", _UNSIGNED),
]
JSON_BODIES: list[Any] = [
    [],
    [1, 2],
    "a string",
    42,
    -1.5,
    True,
    {},
    _nested(100),
    _nested(600),
    {"x": "y" * 200_000},
    {"limit": 10**40, "min_depth": -(10**40), "origin_server_ts": 10**40},
    *(
        {"earliest_events": [], "latest_events": ["$x"], "limit": limit, "min_depth": depth}
        for limit, depth in ((10**30, 0), (-(10**30), 0), (5, 10**30), (5, -(10**30)), (-1, -1))
    ),
    *({"limit": limit} for limit in (10**30, -(10**30), -1, 2**63)),
    *({name: value for name in BODY_FIELDS} for value in WRONG_VALUES),
]


@dataclass
class Target:
    method: str
    path: str  # template with {param} / {param:path}

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.path)

    def fill(self, values: dict[str, str]) -> str:
        return _PARAM.sub(lambda m: values[m.group(1)], self.path)


@dataclass
class Sweep:
    scene: Scene
    room: Room
    event_id: str
    join_pdu: dict[str, Any]
    targets: list[Target]
    client: httpx.AsyncClient

    def valid_values(self) -> dict[str, str]:
        remote = self.scene.remote
        return {
            "room_id": quote(self.room.room_id, safe=""),
            "event_id": quote(self.event_id, safe=""),
            "user_id": quote(remote.user("carol"), safe=""),
            "txn_id": uuid.uuid4().hex,
            "server_name": quote(remote.server_name, safe=""),
            "query_type": "profile",
            "media_id": "sweepMediaId",
        }


def _gateway_targets(config_path: Any) -> list[Target]:
    app = create_app(load_config(config_path), clients=object())  # type: ignore[arg-type]
    targets: list[Target] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI >= 0.165
            if included is not None:
                context = getattr(route, "include_context", None)
                walk(included.routes, prefix + (getattr(context, "prefix", "") or ""))
            elif isinstance(route, Route):
                for method in sorted(route.methods or ()):
                    if method != "HEAD":
                        targets.append(Target(method, prefix + route.path))

    walk(app.routes, "")
    return targets


@pytest.fixture(scope="module")
async def sweep(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sweep]:
    scene, database_url = await start_scene(tmp_path_factory.mktemp("no-server-errors"))
    client = httpx.AsyncClient(verify=False, timeout=60)
    try:
        room = await scene.joined_room()
        event_id, message = await scene.build(
            room, scene.remote.user("bob"), "m.room.message", {"body": "hi"}
        )
        assert (await scene.send([message])).status_code == 200
        carol = scene.remote.user("carol")
        _, join_pdu = await scene.build(room, carol, "m.room.member", {"membership": "join"}, carol)
        targets = _gateway_targets(scene.mxfed.config_path)
        assert len(targets) >= 25, targets
        yield Sweep(scene, room, event_id, join_pdu, targets, client)
    finally:
        await client.aclose()
        await stop_scene(scene, database_url)


# Requests and checks ---------------------------------------------------------------


def _prepare(
    sweep: Sweep, method: str, uri: str, body: Any, *, auth: str = "valid"
) -> tuple[httpx.URL, dict[str, str], bytes | None]:
    """URL, headers and raw body; the signature covers the target exactly as sent."""
    url = httpx.URL(sweep.scene.mxfed.federation_url + uri)
    target = url.raw_path.decode("ascii")
    raw: bytes | None
    signed: Any
    if isinstance(body, tuple):
        raw, signed = body
        signed = None if signed is _UNSIGNED else signed
    elif body is None:
        raw, signed = None, None
    else:
        raw, signed = encode_json(body), body
    headers = {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
    if auth == "valid":
        headers["Authorization"] = sweep.scene.remote.authorization(
            method, sweep.scene.mxfed.server_name, target, signed
        )
    elif auth == "garbage":
        headers["Authorization"] = 'X-Matrix origin="nope",key=,sig="%%%"'
    return url, headers, raw


def _problem(case: str, response: httpx.Response) -> str | None:
    """Why ``response`` breaks the rule, or None."""
    if response.status_code >= 500:
        return f"{case}: {response.status_code} {response.text[:300]}"
    if 200 <= response.status_code < 300:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{case}: {response.status_code} with a body that is not JSON: {response.text[:200]}"
    if not (
        isinstance(body, dict)
        and isinstance(body.get("errcode"), str)
        and isinstance(body.get("error"), str)
    ):
        return f"{case}: {response.status_code} without errcode/error: {response.text[:200]}"
    return None


async def _request(
    sweep: Sweep, method: str, uri: str, body: Any = None, *, auth: str = "valid"
) -> str | None:
    url, headers, raw = _prepare(sweep, method, uri, body, auth=auth)
    case = f"{method} {uri[:150]} body={repr(body)[:120]} auth={auth}"
    try:
        response = await sweep.client.request(method, url, headers=headers, content=raw)
    except httpx.HTTPError as error:
        return f"{case}: no answer ({error!r})"
    return _problem(case, response)


def _cases(sweep: Sweep, target: Target) -> Iterator[tuple[str, str, Any, str]]:
    """(method, uri, body, auth) for one route."""
    has_body = target.method in ("PUT", "POST")
    default_body: Any = {} if has_body else None
    valid = sweep.valid_values()
    base = target.fill(valid)

    yield target.method, base, default_body, "none"
    yield target.method, base, default_body, "garbage"
    yield target.method, base, default_body, "valid"
    for param in target.params:
        for segment in GARBAGE_SEGMENTS:
            uri = target.fill({**sweep.valid_values(), param: segment})
            yield target.method, uri, default_body, "valid"
    for value in BAD_QUERY_VALUES:
        query = "&".join(f"{name}={value}" for name in QUERY_NAMES)
        yield target.method, f"{base}?{query}", default_body, "valid"
    # One integer parameter bad at a time, the others plausible.
    good = {
        "limit": "10",
        "v": valid["event_id"],
        "ver": "10",
        "event_id": valid["event_id"],
        "ts": "1",
        "dir": "b",
        "minimum_valid_until_ts": "0",
    }
    for name in ("limit", "ts", "minimum_valid_until_ts"):
        for value in ("99999999999999999999999", "-99999999999999999999999", "-1", "x"):
            query = "&".join(f"{k}={value if k == name else v}" for k, v in good.items())
            yield target.method, f"{base}?{query}", default_body, "valid"
    repeated = "&".join(f"{name}=1&{name}=2" for name in QUERY_NAMES)
    yield target.method, f"{base}?{repeated}", default_body, "valid"
    yield target.method, f"{base}?limit=10&v=&ver=&event_id=&ts=&dir=", default_body, "valid"
    if has_body:
        for raw in RAW_BODIES:
            yield target.method, target.fill(sweep.valid_values()), raw, "valid"
        for body in JSON_BODIES:
            yield target.method, target.fill(sweep.valid_values()), body, "valid"
        for body in _pdu_bodies(sweep, target):
            yield target.method, target.fill(sweep.valid_values()), body, "valid"


def _broken_pdus(pdu: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in list(pdu):
        broken = copy.deepcopy(pdu)
        del broken[key]
        yield broken
        for value in (None, "s", 1, 1.5, [], {}, 10**30, "x" * 300):
            broken = copy.deepcopy(pdu)
            broken[key] = value
            yield broken
    for key in ("type", "state_key", "sender", "room_id", "event_id"):
        broken = copy.deepcopy(pdu)
        broken[key] = "@" + "z" * 300 + ":example.org"
        yield broken
    broken = copy.deepcopy(pdu)
    broken["content"]["pad"] = "p" * 70_000
    yield broken
    broken = copy.deepcopy(pdu)
    broken["content"]["n"] = 10**30
    yield broken
    broken = copy.deepcopy(pdu)
    broken["prev_events"] = [f"$e{i}" for i in range(30)]
    yield broken


def _pdu_bodies(sweep: Sweep, target: Target) -> Iterator[Any]:
    """PDU-shaped bodies for the routes that take PDUs."""
    pdu = sweep.join_pdu
    path = target.path
    if "/send/" in path:
        base = {"origin": sweep.scene.remote.server_name, "origin_server_ts": 1}
        yield {**base, "pdus": list(_broken_pdus(pdu))[:50]}
        yield {**base, "pdus": list(_broken_pdus(pdu))[50:100]}
        yield {**base, "pdus": list(_broken_pdus(pdu))[100:]}
        yield {**base, "pdus": [], "edus": [{"edu_type": t, "content": {}} for t in _EDU_TYPES]}
        yield {**base, "pdus": [], "edus": list(_broken_edus(sweep))}
    elif "/v2/invite/" in path:
        for version in ("999", "", "1", "12", 5, None):
            yield {"room_version": version, "event": pdu, "invite_room_state": []}
        for broken in _broken_pdus(pdu):
            yield {"room_version": sweep.room.version.identifier, "event": broken}
        yield {"room_version": "10", "event": pdu, "invite_room_state": [1, "x", {}, pdu]}
    elif any(part in path for part in ("send_join", "send_leave", "send_knock", "/v1/invite/")):
        yield from _broken_pdus(pdu)
    elif "exchange_third_party_invite" in path:
        yield from _broken_pdus(pdu)
        yield {
            "type": "m.room.member",
            "room_id": sweep.room.room_id,
            "sender": sweep.scene.creator,
            "state_key": "@" + "s" * 300 + ":example.org",
            "content": {
                "membership": "invite",
                "third_party_invite": {"signed": {"mxid": "x", "token": "t", "signatures": {}}},
            },
        }


_EDU_TYPES = [
    "m.typing",
    "m.receipt",
    "m.presence",
    "m.direct_to_device",
    "m.device_list_update",
    "m.signing_key_update",
    "unknown.type",
]


def _broken_edus(sweep: Sweep) -> Iterator[dict[str, Any]]:
    room_id = sweep.room.room_id
    bob = sweep.scene.remote.user("bob")
    long_user = "@" + "u" * 3000 + ":" + sweep.scene.remote.server_name
    yield {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": 5, "typing": 1}}
    yield {
        "edu_type": "m.typing",
        "content": {"room_id": room_id, "user_id": long_user, "typing": True},
    }
    yield {
        "edu_type": "m.typing",
        "content": {"room_id": "!" + "r" * 3000, "user_id": bob, "typing": True},
    }
    for receipt in (
        {"event_ids": "x", "data": {}},
        {"event_ids": [], "data": {"ts": 1}},
        {"event_ids": [1], "data": {"ts": 1}},
        {"event_ids": ["$" + "e" * 3000], "data": {"ts": 1}},
        {"event_ids": ["$a", "$b"], "data": {"ts": 1}},
        {"event_ids": ["$a"], "data": {"ts": 10**30, "pad": "p" * 3000}},
        {"event_ids": ["$a"], "data": "x"},
    ):
        yield {"edu_type": "m.receipt", "content": {room_id: {"m.read": {bob: receipt}}}}
    yield {"edu_type": "m.receipt", "content": {room_id: {"m.read": {long_user: {}}}}}
    yield {"edu_type": "m.receipt", "content": {room_id: {"m.read": []}}}
    yield {"edu_type": "m.receipt", "content": {room_id: []}}
    for content in (
        {"user_id": 5},
        {"user_id": bob, "device_id": 5, "stream_id": "x", "prev_id": "x"},
        {"user_id": bob, "device_id": "D", "stream_id": 10**30, "prev_id": [10**30]},
        {"user_id": long_user, "device_id": "d" * 3000, "stream_id": 1},
        {"user_id": bob, "device_id": "D", "stream_id": 1, "keys": "x", "deleted": "y"},
    ):
        yield {"edu_type": "m.device_list_update", "content": content}
    for content in (
        {"user_id": 5},
        {"user_id": bob, "master_key": "x", "self_signing_key": []},
        {"user_id": long_user, "master_key": {}},
    ):
        yield {"edu_type": "m.signing_key_update", "content": content}
    for content in (
        {"sender": bob, "type": "t", "message_id": "m" * 40, "messages": {}},
        {"sender": 5, "type": 5, "message_id": 5, "messages": 5},
    ):
        yield {"edu_type": "m.direct_to_device", "content": content}


async def _sweep_target(sweep: Sweep, target: Target) -> list[str]:
    problems = []
    for method, uri, body, auth in _cases(sweep, target):
        problem = await _request(sweep, method, uri, body, auth=auth)
        if problem:
            problems.append(problem)
    return problems


# The routes are only known once mxfed's config exists, so they are split
# into a fixed number of shards, every route in exactly one.
_SHARDS = 4


@pytest.mark.parametrize("shard", range(_SHARDS))
async def test_no_route_answers_bad_input_with_a_server_error(sweep: Sweep, shard: int) -> None:
    targets = sweep.targets[shard::_SHARDS]
    results = await asyncio.gather(*(_sweep_target(sweep, target) for target in targets))
    problems = [problem for result in results for problem in result]
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems[:40])


def test_every_route_is_covered(sweep: Sweep) -> None:
    paths = {target.path for target in sweep.targets}
    assert "/_matrix/federation/v1/send/{txn_id}" in paths
    assert all(target.method in ("GET", "PUT", "POST") for target in sweep.targets)


# Hypothesis: arbitrary path segments and JSON bodies on every route ------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(BODY_FIELDS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
_segment = st.text(max_size=300).map(lambda text: quote(text, safe=""))


async def test_arbitrary_segments_and_bodies(sweep: Sweep) -> None:
    loop = asyncio.get_running_loop()
    problems: list[str] = []

    @settings(
        max_examples=250,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        index=st.integers(min_value=0, max_value=len(sweep.targets) - 1),
        segment=_segment,
        body=_json,
        query=st.dictionaries(st.sampled_from(QUERY_NAMES), st.text(max_size=30), max_size=4),
    )
    def check(index: int, segment: str, body: Any, query: dict[str, str]) -> None:
        target = sweep.targets[index]
        values = sweep.valid_values()
        for param in target.params[:1]:
            values[param] = segment
        uri = target.fill(values)
        if query:
            uri += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        sent = body if target.method in ("PUT", "POST") else None
        problem = asyncio.run_coroutine_threadsafe(
            _request(sweep, target.method, uri, sent), loop
        ).result(60)
        if problem:
            problems.append(problem)

    await asyncio.to_thread(check)
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems[:40])


# Spec size limits on the PDU input paths (https://spec.matrix.org/v1.19/client-server-api/#size-limits)


def _oversized(sweep: Sweep, what: str) -> tuple[str, dict[str, Any]]:
    """A signed join of @carol that breaks one limit: the whole size or a 255-byte field."""
    scene, room = sweep.scene, sweep.room
    carol = scene.remote.user("carol")
    content: dict[str, Any] = {"membership": "join"}
    extra: dict[str, Any] = {}
    if what == "size":
        content["pad"] = "p" * 65_536
    elif what == "type":
        extra["event_type"] = "m." + "t" * 260
    state_key = carol if what != "state_key" else "@" + "k" * 300 + ":" + scene.remote.server_name
    return scene.remote.build_pdu(
        room.version,
        room_id=room.room_id,
        sender=carol,
        event_type=extra.get("event_type", "m.room.member"),
        content=content,
        prev_events=[sweep.event_id],
        auth_events=[],
        depth=10,
        state_key=state_key,
    )


@pytest.mark.parametrize("what", ["size", "type", "state_key"])
async def test_send_join_refuses_pdus_over_the_limits(sweep: Sweep, what: str) -> None:
    event_id, pdu = _oversized(sweep, what)
    room_id = quote(sweep.room.room_id, safe="")
    uri = f"/_matrix/federation/v2/send_join/{room_id}/{quote(event_id, safe='')}"
    response = await sweep.scene.remote.federation_request(
        sweep.scene.mxfed.federation_url, sweep.scene.mxfed.server_name, "PUT", uri, pdu
    )
    assert response.status_code == 400, response.text
    assert response.json()["errcode"] == "M_BAD_JSON"


@pytest.mark.parametrize("what", ["size", "type", "state_key"])
async def test_send_refuses_pdus_over_the_limits(sweep: Sweep, what: str) -> None:
    event_id, pdu = _oversized(sweep, what)
    response = await sweep.scene.send([pdu])
    assert response.status_code == 200, response.text
    assert "error" in response.json()["pdus"][event_id]
    assert await sweep.scene.record(event_id) is None
