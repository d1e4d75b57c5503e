"""Inbound PDUs/s through the whole federation path: HTTPS, X-Matrix, /send, services.

Not a test. Starts a whole mxfed (`mxfed run`, every part as its own process)
on a throw-away database and a remote homeserver on loopback whose user joins
public rooms on mxfed; then the remote sends 50-PDU transactions of signed
messages over HTTPS with X-Matrix, one transaction in flight (as the spec
requires of a sender), first into one room, then spread over 5 rooms, then over 20.

Prints PDUs/s, the share of time per stage (gateway HTTP + X-Matrix, and the
events service's receive stages read from its Prometheus metrics), the CPU
(in cores) and RSS of each part during each scenario (what the Kubernetes
resource requests in deploy/kubernetes/ are sized from; PostgreSQL's is that of
the backends serving mxfed's database), and the ed25519 verifications/s this
machine manages in the same run. Each scenario starts with an ``ANALYZE`` of the
database (this cluster runs without autovacuum: see :func:`analyze`).

Then the same load into a Synapse started in the same run (the test extras'
matrix-synapse on a PostgreSQL database of its own, loopback; the remote joins
its rooms with make_join and send_join), after it settled, and mxfed's rate,
Synapse's and the ratio. The clock stops when the last PDU is readable over
federation (``GET /event``). Synapse answers ``/send`` before it processes the
PDUs and prunes a backlog of 100 or more staged PDUs in a room, so its
transactions go one at a time once the previous one is readable (mxfed answers
once they are stored).

Why Synapse's figure is what it is (checked on the 2-core machine, load 2-5):
it handles a room's staged PDUs one after another, and each costs it ~22-30 ms
of its own CPU and ~11-14 ms of its PostgreSQL backends' (~55 database
transactions per PDU: staging, the room's inbound lock, the purge read lock,
auth, push actions, persistence, stream positions), so one room runs at one PDU
every ~35-45 ms, ~20-30 PDUs/s; rooms overlap a little (one Python process).
Bigger caches (``global_factor`` 20, ``event_cache_size`` 200K) changed neither
the CPU nor the transactions per PDU, polling every 200 ms instead of 20 ms
neither, and sending the next transaction as soon as the first PDU of the
previous one is readable (the backlog kept under 100) did not raise the rate.
Sending back to back as a Synapse sender would makes Synapse prune the backlog:
it keeps the newest PDU and fetches at most 10 of the gap (``get_missing_events``),
so the PDUs it dropped are never readable (here the remote serves no
``/state_ids`` either, and the kept ones were rejected). No method that has every
PDU processed gets near the 174 PDUs/s issue 18 quotes for one room (145 for
five). Its 20-room figure (63-66/s) and one-PDU p50 (52.6 ms) this bench does
reproduce (63/s and 48 ms at load 3); its one- and five-room figures come back
when the transactions go back to back and the clock stops when each room's
newest PDU is readable (a remote that serves ``/event`` and ``/state_ids``):
one room 217 PDUs/s with 441 of 500 PDUs never readable, five rooms (30
transactions) 109/s with 909 of 1,500 never readable, 20 rooms (10
transactions) 60/s with all readable. So this bench waits for every room's
newest PDU before the next transaction and checks every PDU after the clock.
Synapse's CPU and its PostgreSQL's per PDU are printed with its rate, so that a
ratio can be read against them. Synapse starts once mxfed's scenarios are done
(its start-up work no longer runs during them) and mxfed is stopped by then.
``--no-synapse`` skips Synapse, ``--synapse-only`` runs only Synapse;
``--profile DIR`` records py-spy profiles.

    .venv/bin/python bench/bench_send_http.py [--transactions 20] [--no-synapse | --synapse-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import nacl.signing
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from synapse_harness import SynapseServer  # noqa: E402

from matrix_protocol.auth_events import select_auth_event_ids  # noqa: E402
from matrix_protocol.canonical_json import decode_json  # noqa: E402
from matrix_protocol.events import Event  # noqa: E402
from matrix_protocol.room_versions import room_version  # noqa: E402
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.fake_homeserver import FakeHomeserver  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402

PDUS_PER_TRANSACTION = 50


def ed25519_verifications_per_second(seconds: float = 1.0) -> float:
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(b"x" * 1024)
    verify_key, count, started = key.verify_key, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            verify_key.verify(signed)
        count += 200
    return count / (time.perf_counter() - started)


# Every PDU the remote built, by event id: Synapse asks for the ones it has not processed
# yet when it takes a later one first (get_missing_events).
SENT: dict[str, dict[str, Any]] = {}


async def serve_missing_events(request: web.Request) -> web.Response:
    """``POST /_matrix/federation/v1/get_missing_events/{roomId}`` from :data:`SENT`
    (https://spec.matrix.org/v1.19/server-server-api/, "Retrieving missing events")."""
    body = await request.json()
    seen = set(body.get("earliest_events", [])) | set(body["latest_events"])
    frontier, found = list(body["latest_events"]), []
    while frontier and len(found) < body.get("limit", 10):
        previous = []
        for event_id in frontier:
            for prev in SENT.get(event_id, {}).get("prev_events", []):
                if prev not in seen and prev in SENT:
                    seen.add(prev)
                    found.append(SENT[prev])
                    previous.append(prev)
        frontier = previous
    found.sort(key=lambda pdu: pdu["depth"])
    return web.json_response({"events": found[: body.get("limit", 10)]})


class Room:
    """A room on mxfed that the remote user has joined, with the remote's view of its head."""

    def __init__(self, room_id: str, version: str, state: dict, extremities: list, depth: int):
        self.room_id = room_id
        self.version = room_version(version)
        self.state = state
        self.extremities = extremities
        self.depth = depth

    def next_pdu(
        self,
        remote: FakeHomeserver,
        sender: str,
        event_type: str,
        content: dict,
        state_key: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        auth = select_auth_event_ids(
            event_type, sender, state_key, content, self.version, self.state
        )
        self.depth += 1
        event_id, pdu = remote.build_pdu(
            self.version,
            room_id=self.room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=self.extremities,
            auth_events=auth,
            depth=self.depth,
            state_key=state_key,
        )
        self.extremities = [event_id]
        SENT[event_id] = pdu
        if state_key is not None:
            self.state[(event_type, state_key)] = event_id
        return event_id, pdu


async def join_public_room(
    stub: events_pb2_grpc.EventsStub, mxfed: MxfedProcess, remote: FakeHomeserver, user: str
) -> Room:
    created = await stub.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(
            creator=f"@admin:{mxfed.server_name}", preset="public_chat"
        )
    )
    info = await stub.QueryRoomInfo(events_pb2.QueryRoomInfoRequest(room_id=created.room_id))
    current = await stub.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(room_id=created.room_id)
    )
    state = {}
    for record in current.events:
        pdu = decode_json(record.pdu_json)
        state[(pdu["type"], pdu["state_key"])] = record.event_id
    room = Room(
        created.room_id, info.room_version, state, list(info.forward_extremities), info.max_depth
    )
    join_id, join = room.next_pdu(remote, user, "m.room.member", {"membership": "join"}, user)
    response = await send(remote, mxfed, [join])
    assert response == {"pdus": {join_id: {}}}, response
    return room


async def send(remote: FakeHomeserver, mxfed: MxfedProcess | Any, pdus: list[dict]) -> dict:
    """PUT one transaction to ``mxfed`` (or a Synapse: anything with ``federation_url`` and
    ``server_name``)."""
    body = {"origin": remote.server_name, "origin_server_ts": remote.next_ts(), "pdus": pdus}
    uri = f"/_matrix/federation/v1/send/{uuid.uuid4().hex}"
    reply = await remote.federation_request(
        mxfed.federation_url, mxfed.server_name, "PUT", uri, body
    )
    reply.raise_for_status()
    return reply.json()


async def join_synapse_room(synapse: Any, token: str, remote: FakeHomeserver, user: str) -> Room:
    """A public room made by a Synapse user, joined by ``user`` over federation
    (make_join, send_join), with the remote's view of its state and head."""
    async with synapse.client() as client:
        room_id = await client.create_room(token, preset="public_chat")
    made = await remote.federation_request(
        synapse.federation_url,
        synapse.server_name,
        "GET",
        f"/_matrix/federation/v1/make_join/{quote(room_id)}/{quote(user)}?ver=10&ver=11&ver=12",
    )
    made.raise_for_status()
    template = made.json()
    version = room_version(template["room_version"])
    event = template["event"]
    join_id, join = remote.build_pdu(
        version,
        room_id=room_id,
        sender=user,
        event_type="m.room.member",
        content={"membership": "join"},
        prev_events=event["prev_events"],
        auth_events=event["auth_events"],
        depth=event["depth"],
        state_key=user,
    )
    joined = await remote.federation_request(
        synapse.federation_url,
        synapse.server_name,
        "PUT",
        f"/_matrix/federation/v2/send_join/{quote(room_id)}/{quote(join_id)}",
        join,
    )
    joined.raise_for_status()
    state = {}
    for pdu in joined.json()["state"]:
        state[(pdu["type"], pdu["state_key"])] = Event.from_pdu(pdu, version).event_id
    state[("m.room.member", user)] = join_id
    return Room(room_id, version.identifier, state, [join_id], event["depth"])


async def readable(
    remote: FakeHomeserver, server: Any, event_id: str, interval: float = 0.02
) -> None:
    """Until ``event_id`` is served over federation by ``server`` (mxfed or Synapse)."""
    while True:
        reply = await remote.federation_request(
            server.federation_url,
            server.server_name,
            "GET",
            f"/_matrix/federation/v1/event/{quote(event_id)}",
        )
        if reply.status_code == 200:
            return
        await asyncio.sleep(interval)


async def run_synapse_scenario(
    name: str,
    rooms: list[Room],
    remote: FakeHomeserver,
    synapse: Any,
    user: str,
    count: int,
    database_url: str,
) -> float:
    """The same load as :func:`run_scenario` into a Synapse; PDUs/s.

    Synapse answers ``/send`` once the PDUs are staged and processes them after; a room
    with 100 staged PDUs or more is pruned to its newest (the dropped ones are never
    readable). So each transaction goes once the previous one is readable in every room,
    as mxfed's does by its answer (it answers once they are stored); after the clock,
    every PDU is checked to be readable.
    """
    batches, sent = [], []
    for t in range(count):
        pdus, lasts = [], {}
        for i in range(PDUS_PER_TRANSACTION):
            room = rooms[i % len(rooms)]
            event_id, pdu = room.next_pdu(
                remote, user, "m.room.message", {"body": f"{name} {t}/{i}"}
            )
            lasts[room.room_id] = event_id
            sent.append(event_id)
            pdus.append(pdu)
        batches.append((list(lasts.values()), pdus))
    await analyze(database_url)  # as for mxfed
    process = psutil.Process(synapse.pid)
    cpu_before = sum(process.cpu_times()[:2])
    postgres_before = await backend_cpu(database_url)
    commits_before = await committed_transactions(database_url)
    started = time.perf_counter()
    for lasts, pdus in batches:
        response = await send(remote, synapse, pdus)
        errors = [v for v in response["pdus"].values() if v]
        assert not errors, errors[:3]
        for last in lasts:
            await readable(remote, synapse, last)
    elapsed = time.perf_counter() - started
    total = count * PDUS_PER_TRANSACTION
    cpu = (sum(process.cpu_times()[:2]) - cpu_before) / total * 1e3
    postgres_after = await backend_cpu(database_url)
    postgres = sum(cpu - postgres_before.get(pid, 0.0) for pid, cpu in postgres_after.items())
    commits = await committed_transactions(database_url) - commits_before
    unreadable = 0
    for event_id in sent:
        reply = await remote.federation_request(
            synapse.federation_url,
            synapse.server_name,
            "GET",
            f"/_matrix/federation/v1/event/{quote(event_id)}",
        )
        unreadable += reply.status_code != 200
    assert not unreadable, f"{unreadable} PDUs not readable on Synapse"
    print(
        f"\nSynapse, {name}: {total} PDUs in {elapsed:.2f} s = {total / elapsed:,.0f} PDUs/s"
        f" (load {os.getloadavg()[0]:.1f}; CPU per PDU: Synapse {cpu:.1f} ms,"
        f" its PostgreSQL {1e3 * postgres / total:.1f} ms; ~{commits / total:.0f} database"
        f" transactions per PDU; RSS {process.memory_info().rss / 2**20:.0f} MiB;"
        f" all {total} readable)"
    )
    return total / elapsed


async def committed_transactions(database_url: str) -> int:
    """Transactions committed so far in ``database_url``'s database (PostgreSQL's
    statistics, flushed by each backend within a second or so: a close count)."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await connection.close()


def stage_seconds(mxfed: MxfedProcess) -> dict[str, float]:
    """Cumulative seconds per stage from the events and gateway metrics."""
    stages: dict[str, float] = {}
    events = _metrics(mxfed, "events")
    for stage, value in re.findall(
        r'mxfed_events_input_stage_seconds_sum\{stage="([^"]+)"\} ([0-9.e+-]+)', events
    ):
        stages[stage] = float(value)
    for name, value in re.findall(
        r"mxfed_events_stream_round_seconds_(sum|count) ([0-9.e+-]+)", events
    ):
        stages[f"stream rounds {name}"] = float(value)
    gateway = _metrics(mxfed, "gateway")
    for value in re.findall(
        r'mxfed_gateway_request_seconds_sum\{method="PUT",route="/_matrix/federation/v1/send/'
        r'\{txn_id\}"\} ([0-9.e+-]+)',
        gateway,
    ):
        stages["gateway total"] = float(value)
    return stages


def rpc_seconds(mxfed: MxfedProcess) -> dict[str, float]:
    """Cumulative seconds of the internal RPCs on the one-PDU path, as each side saw them
    ("part client|server Method"), and the gateway's /send total."""
    seconds = {}
    for part in ("gateway", "events", "keys"):
        text = _metrics(mxfed, part)
        for side, method, value in re.findall(
            r'mxfed_grpc_(client|server)_handling_seconds_sum\{method="[^"]*/(\w+)"\}'
            r" ([0-9.e+-]+)",
            text,
        ):
            if method in ("VerifyRequest", "VerifyJsonSignatures", "InputTransaction"):
                seconds[f"{part} {side} {method}"] = float(value)
    seconds.update(stage_seconds(mxfed))
    return seconds


def _metrics(mxfed: MxfedProcess, part: str) -> str:
    url = f"http://127.0.0.1:{mxfed.metrics_ports[part]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def part_usage(mxfed: MxfedProcess) -> dict[str, tuple[float, int]]:
    """CPU seconds so far and RSS of each part (``--service NAME``) of the running mxfed and
    of this bench process (the remote's client)."""
    assert mxfed.process is not None
    usage = {}
    for child in psutil.Process(mxfed.process.pid).children(recursive=True):
        command = child.cmdline()
        if "--service" in command:
            times = child.cpu_times()
            part = command[command.index("--service") + 1]
            usage[part] = (times.user + times.system, child.memory_info().rss)
    own = psutil.Process().cpu_times()
    usage["(bench client)"] = (own.user + own.system, psutil.Process().memory_info().rss)
    return usage


async def backend_cpu(database_url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving ``database_url``, by pid (the
    server's other databases are other people's: the machine is shared)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    cpu = {}
    for row in rows:
        try:
            times = psutil.Process(row["pid"]).cpu_times()
        except psutil.Error:
            continue  # ended meanwhile
        cpu[row["pid"]] = times.user + times.system
    return cpu


async def analyze(database_url: str) -> None:
    """What autovacuum would have done by now on a running server: this cluster runs
    without it (CI), so nothing else gives the planner the tables' sizes, and a pooled
    connection would keep the plans it made while they were nearly empty (sequential
    scans of the events table for every lookup by id)."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def run_scenario(
    name: str,
    rooms: list[Room],
    remote: FakeHomeserver,
    mxfed: MxfedProcess,
    user: str,
    transactions: int,
) -> float:
    """The load into mxfed, clock stopped when the last PDU is readable over federation;
    PDUs/s (and the per-stage and per-part figures printed)."""
    batches = []
    last = ""
    for t in range(transactions):
        pdus = []
        for i in range(PDUS_PER_TRANSACTION):
            room = rooms[i % len(rooms)]
            last, pdu = room.next_pdu(remote, user, "m.room.message", {"body": f"{name} {t}/{i}"})
            pdus.append(pdu)
        batches.append(pdus)
    await analyze(mxfed.database_url)
    before = stage_seconds(mxfed)
    usage_before = part_usage(mxfed)
    postgres_before = await backend_cpu(mxfed.database_url)
    started = time.perf_counter()
    for pdus in batches:
        response = await send(remote, mxfed, pdus)
        errors = [v for v in response["pdus"].values() if v]
        assert not errors, errors[:3]
    await readable(remote, mxfed, last)
    elapsed = time.perf_counter() - started
    usage_after = part_usage(mxfed)
    postgres_after = await backend_cpu(mxfed.database_url)
    usage_after["(PostgreSQL)"] = (
        sum(cpu - postgres_before.get(pid, 0.0) for pid, cpu in postgres_after.items()),
        0,
    )
    after = stage_seconds(mxfed)
    total = transactions * PDUS_PER_TRANSACTION
    print(f"\n{name}: {total} PDUs in {elapsed:.2f} s = {total / elapsed:,.0f} PDUs/s")
    spent = {stage: after.get(stage, 0) - before.get(stage, 0) for stage in after}
    gateway_total = spent.pop("gateway total", elapsed)
    rounds = spent.pop("stream rounds count", 0)
    round_seconds = spent.pop("stream rounds sum", 0)
    per_transaction = 1000 * gateway_total / transactions
    print(f"  gateway, per transaction (HTTP in to response out): {per_transaction:.1f} ms")
    if rounds:
        print(
            f"  stream-position rounds: {rounds / transactions:.1f} per transaction,"
            f" {1000 * round_seconds / rounds:.1f} ms each (lock, positions, commit)"
        )
    print("  events service stages, ms per transaction (rooms run in parallel, so they can add up")
    print("  to more than the gateway time):")
    for stage, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {stage:24s} {1000 * seconds / transactions:7.1f} ms")
    inside = sum(spent.values())
    if len(rooms) == 1:
        outside = gateway_total - inside
        label = "(outside: HTTP, X-Matrix, gRPC hops)"
        print(f"    {label:24s} {1000 * outside / transactions:7.1f} ms")
    print("  each part meanwhile: CPU in cores and per PDU, RSS at the end")
    for part, (cpu_after, rss) in sorted(usage_after.items()):
        cpu = cpu_after - usage_before.get(part, (0.0, 0))[0]
        print(
            f"    {part:10s} {cpu / elapsed:5.2f} cores  {1e6 * cpu / total:6.0f} µs/PDU"
            f"  {rss / 2**20:6.1f} MiB"
        )
    return total / elapsed


async def measure_visibility_latency(
    stub: events_pb2_grpc.EventsStub,
    room: Room,
    remote: FakeHomeserver,
    mxfed: MxfedProcess,
    user: str,
    samples: int = 50,
) -> None:
    """One-PDU transaction sent → the event arrives on a local consumer's stream."""
    stream = stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room.room_id, after_position=-1)
    )
    arrived: dict[str, float] = {}

    async def consume() -> None:
        async for item in stream:
            if item.HasField("event"):
                arrived[item.event.event_id] = time.perf_counter()

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.5)  # let the subscription go live
    before = rpc_seconds(mxfed)
    latencies = []
    # The event on the stream after the /send answer reached the bench (negative: before).
    after_answer = []
    for n in range(samples):
        event_id, pdu = room.next_pdu(remote, user, "m.room.message", {"body": f"ping {n}"})
        sent = time.perf_counter()
        await send(remote, mxfed, [pdu])
        answered = time.perf_counter()
        while event_id not in arrived:  # noqa: ASYNC110 (polling keeps the consumer simple)
            await asyncio.sleep(0.0005)
        latencies.append(1000 * (arrived[event_id] - sent))
        after_answer.append(1000 * (arrived[event_id] - answered))
    after = rpc_seconds(mxfed)
    consumer.cancel()
    stream.cancel()
    latencies.sort()
    print(
        f"\none-PDU transaction → visible on a stream: p50 {latencies[len(latencies) // 2]:.1f} ms,"
        f" p90 {latencies[int(len(latencies) * 0.9)]:.1f} ms, mean {sum(latencies) / samples:.1f}"
        f" ms (load {os.getloadavg()[0]:.1f}; target p50 <= 6 ms)"
    )
    after_answer.sort()
    print(
        f"  on the stream after the answer reached the sender: p50"
        f" {after_answer[len(after_answer) // 2]:.2f} ms, mean {sum(after_answer) / samples:.2f} ms"
    )
    print(
        "  where it goes, mean ms per transaction (nested: each line includes those below it;"
        " signatures and lookups overlap, as do the stream round and store_response):"
    )
    spent = {name: 1000 * (after[name] - before.get(name, 0)) / samples for name in after}
    rows = [
        ("gateway /send, HTTP in to response out", spent.get("gateway total", 0)),
        ("  gateway → keys VerifyRequest (X-Matrix)", spent.get("gateway client VerifyRequest", 0)),
        ("    keys serving it", spent.get("keys server VerifyRequest", 0)),
        ("  gateway → events InputTransaction", spent.get("gateway client InputTransaction", 0)),
        ("    events serving it", spent.get("events server InputTransaction", 0)),
        (
            "      events → keys VerifyJsonSignatures",
            spent.get("events client VerifyJsonSignatures", 0),
        ),
        ("        keys serving it", spent.get("keys server VerifyJsonSignatures", 0)),
    ]
    for stage in (
        "transaction_guard",
        "format",
        "signatures",
        "hashes",
        "lookups",
        "room_open",
        "checks_and_state",
        "persistence",
    ):
        rows.append((f"      stage {stage}", spent.get(stage, 0)))
    rows.append(("      stage stream_positions (round)", spent.get("stream_positions", 0)))
    rows.append(("      stage store_response", spent.get("store_response", 0)))
    for label, ms in rows:
        print(f"    {label:44s} {ms:6.2f}")


def start_profilers(
    mxfed: MxfedProcess,
    directory: Path,
    parts: tuple[str, ...] = ("events", "keys", "gateway"),
    prefix: str = "",
    native: bool = False,
) -> list[subprocess.Popen]:
    """py-spy on ``parts`` (default: those of the inbound path; "bench" is the bench's own
    process), raw collapsed stacks in ``directory/<prefix><part>.txt``; ``native`` adds C
    frames (gRPC's core, asyncpg's protocol)."""
    directory.mkdir(parents=True, exist_ok=True)
    assert mxfed.process is not None
    pids = {"bench": os.getpid()}  # the bench's own process: the client side
    for child in psutil.Process(mxfed.process.pid).children():
        cmdline = child.cmdline()
        if "--service" in cmdline:
            pids[cmdline[-1]] = child.pid
    profilers = []
    for part in parts:
        if part in pids:
            output = directory / f"{prefix}{part}.txt"
            profilers.append(
                subprocess.Popen(
                    ["py-spy", "record", "--rate", "250", "--format", "raw"]
                    # C frames need the process paused for each sample.
                    + (["--native"] if native else ["--nonblocking"])
                    + ["--pid", str(pids[part]), "--output", str(output)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    time.sleep(1.0)  # attached
    return profilers


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        profiler.wait(60)


async def compare_with_synapse(
    synapse: Any,
    database_url: str,
    remote: FakeHomeserver,
    user: str,
    transactions: int,
    ours: dict[str, float],
) -> None:
    """The same load into a Synapse started in this run (from the test extras, PostgreSQL,
    loopback), after it settled; then mxfed's rate, Synapse's and the ratio."""
    async with synapse.client() as client:
        _, token = await client.register("bench")
    one = [await join_synapse_room(synapse, token, remote, user)]
    five = [await join_synapse_room(synapse, token, remote, user) for _ in range(5)]
    twenty = [await join_synapse_room(synapse, token, remote, user) for _ in range(20)]
    await asyncio.sleep(5)  # settled: background updates after start and joins done
    await run_synapse_scenario("warm-up", one, remote, synapse, user, 2, database_url)
    theirs = {
        label: await run_synapse_scenario(
            label, rooms, remote, synapse, user, transactions, database_url
        )
        for label, rooms in (("one room", one), ("five rooms", five), ("20 rooms", twenty))
    }
    await measure_synapse_visibility_latency(one[0], remote, synapse, user)
    print(
        "\n(Synapse runs a room's PDUs one after another at its CPU and its PostgreSQL's"
        " CPU per PDU above: see this script's docstring for what was tried to speed it up)"
    )
    if not ours:
        return
    print("\ninbound PDUs/s, same load, same run (Synapse 1.163 on PostgreSQL):")
    for label, rate in ours.items():
        print(
            f"  {label:10s} mxfed {rate:7,.0f}  Synapse {theirs[label]:7,.0f}"
            f"  ratio {rate / theirs[label]:5.1f}x"
        )


async def measure_synapse_visibility_latency(
    room: Room, remote: FakeHomeserver, synapse: Any, user: str, samples: int = 20
) -> None:
    """One-PDU transaction sent → readable over federation on Synapse (polled every 2 ms:
    it has no stream a consumer could wait on)."""
    latencies = []
    for n in range(samples):
        event_id, pdu = room.next_pdu(remote, user, "m.room.message", {"body": f"ping {n}"})
        sent = time.perf_counter()
        await send(remote, synapse, [pdu])
        await readable(remote, synapse, event_id, interval=0.002)
        latencies.append(1000 * (time.perf_counter() - sent))
    latencies.sort()
    print(
        f"\nSynapse, one-PDU transaction → readable over federation:"
        f" p50 {latencies[len(latencies) // 2]:.1f} ms,"
        f" p90 {latencies[int(len(latencies) * 0.9)]:.1f} ms (load {os.getloadavg()[0]:.1f})"
    )


async def main(
    transactions: int,
    profile: Path | None = None,
    no_synapse: bool = False,
    synapse_only: bool = False,
    latency_only: bool = False,
    samples: int = 50,
) -> None:
    ceiling = ed25519_verifications_per_second()
    print(f"ed25519 verifications/s on this machine (one core): {ceiling:,.0f}")
    remote = FakeHomeserver()
    remote.route(
        "POST", "/_matrix/federation/v1/get_missing_events/{room_id}", serve_missing_events
    )
    await remote.start()
    user = remote.user("bench")
    ours: dict[str, float] = {}
    try:
        if not synapse_only:
            ours = await run_mxfed(remote, user, transactions, profile, latency_only, samples)
        if not no_synapse and not latency_only:
            synapse_database = await create_database("synapse_bench", c_locale=True)
            synapse = SynapseServer(
                extra_config=SynapseServer.postgres_config(synapse_database), log_level="WARNING"
            )
            try:
                await asyncio.to_thread(synapse.start)
                await compare_with_synapse(
                    synapse, synapse_database, remote, user, transactions, ours
                )
            finally:
                await asyncio.to_thread(synapse.stop)
                await drop_database(synapse_database)
    finally:
        await remote.stop()
    print(
        f"\n(targets, issue 18: >= 20x Synapse on PostgreSQL with one room,"
        f" >= 30x with five and with 20; ed25519 ceiling {ceiling:,.0f}/s)"
    )


async def run_mxfed(
    remote: FakeHomeserver,
    user: str,
    transactions: int,
    profile: Path | None,
    latency_only: bool = False,
    samples: int = 50,
) -> dict[str, float]:
    """The three scenarios and the one-PDU latency into a whole mxfed; PDUs/s by scenario."""
    database_url = await create_database("mxfed_bench")
    with tempfile.TemporaryDirectory() as scratch:
        mxfed = MxfedProcess(
            Path(scratch) / "data", database_url, extra_config={"log_level": "WARNING"}
        )
        mxfed.start()
        try:
            async with mxfed.channel("events") as channel:
                stub = events_pb2_grpc.EventsStub(channel)
                one = [await join_public_room(stub, mxfed, remote, user)]
                if not latency_only:
                    five = [await join_public_room(stub, mxfed, remote, user) for _ in range(5)]
                    twenty = [await join_public_room(stub, mxfed, remote, user) for _ in range(20)]
                await run_scenario("warm-up", one, remote, mxfed, user, 2)
                if latency_only:
                    profilers = start_profilers(mxfed, profile) if profile else []
                    await measure_visibility_latency(stub, one[0], remote, mxfed, user, samples)
                    stop_profilers(profilers)
                    return {}
                ours = {}
                for label, prefix, rooms in (
                    ("one room", "one-room-", one),
                    ("five rooms", "five-rooms-", five),
                    ("20 rooms", "20-rooms-", twenty),
                ):
                    profilers = start_profilers(mxfed, profile, prefix=prefix) if profile else []
                    ours[label] = await run_scenario(
                        label, rooms, remote, mxfed, user, transactions
                    )
                    stop_profilers(profilers)
                await measure_visibility_latency(stub, one[0], remote, mxfed, user)
        finally:
            mxfed.stop()
            await drop_database(database_url)
    return ours


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20)
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the events, keys and gateway processes during each scenario; "
        "collapsed stacks written to DIR/<scenario>-<part>.txt, e.g. DIR/20-rooms-events.txt"
        " (py-spy from PyPI on PATH)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--no-synapse", action="store_true", help="mxfed alone")
    only.add_argument("--synapse-only", action="store_true", help="Synapse alone (no ratios)")
    only.add_argument(
        "--latency-only",
        action="store_true",
        help="mxfed alone, only the one-PDU latency (--samples of them) and its breakdown",
    )
    parser.add_argument("--samples", type=int, default=50)
    arguments = parser.parse_args()
    asyncio.run(
        main(
            arguments.transactions,
            arguments.profile,
            arguments.no_synapse,
            arguments.synapse_only,
            arguments.latency_only,
            arguments.samples,
        )
    )
