"""Big rooms: partial-state and full joins of an N-member room, and members arriving one by one.

A whole mxfed (``mxfed run``, throw-away database on the local PostgreSQL at
127.0.0.1:5432) joins rooms hosted by the test resident of
``tests/support/partial_resident.py`` (one v10 room per join, N members on
two servers, one-step auth chains: a lower bound for real rooms).

* partial join (the resident honours ``omit_members``): time until
  PerformJoin returns, until a local message sent right after it has reached
  the resident ("usable"), and until the resync has finished (QueryRoomInfo
  says full state and the member count matches);
* full join (a resident that does not omit members): time until PerformJoin
  returns with the whole state stored;
* arrivals: after a full join of a room of N members, ``--arrivals`` new
  members join one by one, each in its own /send transaction, timed until
  the last is in mxfed's current state — for the big room and for a
  100-member room, so the cost per member event can be compared;
* the stages of each (``mxfed_events_resync_seconds``,
  ``mxfed_events_remote_join_seconds``), and the CPU seconds each process
  (this one, the resident, and the PostgreSQL backends of mxfed's database)
  used meanwhile: on a shared machine the wall clock shows the load, the CPU
  seconds what the work costs;
* the peak RSS (VmHWM) of every mxfed process at the end.

Prints the machine's signature-verification ceiling measured in the same run.

    .venv/bin/python bench/bench_big_rooms.py [--members 20000] [--arrivals 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import orjson  # noqa: E402

from matrix_protocol.signing import generate_signing_key, sign_json, verify_json_signature  # noqa: E402
from mxfed_api.events.v1 import (  # noqa: E402
    events_pb2,
    events_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
)
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.fake_homeserver import FakeHomeserver  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402
from tests.support.partial_resident import MEMBER, BigRoom, add_big_room_routes  # noqa: E402


def verify_ceiling(seconds: float = 0.5) -> float:
    key = generate_signing_key()
    signed = sign_json({"type": "x", "content": {"body": "y" * 600}}, key, "bench", "ed25519:a")
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        verify_json_signature(signed, "bench", "ed25519:a", key.verify_key)
        done += 1
    return done / (time.perf_counter() - started)


def peak_rss_mib(root_pid: int) -> dict[str, float]:
    """VmHWM of ``root_pid`` and its descendants, by command line."""
    found: dict[str, float] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                name = " ".join(cmdline.split()[-2:])[-40:]
                found[f"{pid} {name}"] = int(line.split()[1]) / 1024
    return found


def cpu_seconds(root_pid: int) -> dict[str, float]:
    """User + system CPU seconds of ``root_pid``'s tree by part, and of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
        words = cmdline.split()
        name = words[words.index("--service") + 1] if "--service" in words else "supervisor"
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    usage = resource.getrusage(resource.RUSAGE_SELF)
    found["bench and resident"] = usage.ru_utime + usage.ru_stime
    return found


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def with_postgres_cpu(found: dict[str, float], database_url: str) -> dict[str, float]:
    """``found`` plus the CPU seconds of the PostgreSQL backends serving ``database_url``
    (the local server's processes; a backend gone meanwhile is not counted)."""
    connection = await asyncpg.connect(database_url)
    try:
        pids = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    total = 0.0
    for row in pids:
        try:
            total += _process_cpu(row["pid"])
        except OSError:
            continue
    return {**found, "postgres": total}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> str:
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in spent.items() if seconds >= 0.05)


async def until(get: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 900
    while True:
        value = await get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met; last value {value!r}")
        await asyncio.sleep(0.01)


async def now(value: Any) -> Any:
    return value


class Bench:
    def __init__(self, mxfed: MxfedProcess, server: FakeHomeserver, other: FakeHomeserver):
        self.mxfed = mxfed
        self.server = server
        self.other = other
        self.rooms: dict[str, BigRoom] = {}
        channel = mxfed.channel("events")
        self.events = events_pb2_grpc.EventsStub(channel)
        self.membership = membership_pb2_grpc.MembershipStub(channel)
        self.user = f"@bencher:{mxfed.server_name}"

    def room(self, members: int, omit: bool) -> BigRoom:
        started = time.perf_counter()
        room = BigRoom(self.server, self.other, members=members, omit=omit)
        self.rooms[room.room_id] = room
        print(f"  (built a {members}-member room in {time.perf_counter() - started:.1f} s)")
        return room

    async def join(self, room: BigRoom) -> float:
        started = time.perf_counter()
        await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id,
                user_id=self.user,
                servers=[self.server.server_name],
            ),
            timeout=900,
        )
        return time.perf_counter() - started

    async def info(self, room: BigRoom) -> events_pb2.QueryRoomInfoResponse:
        return await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=60
        )

    async def partial_join(self, room: BigRoom) -> dict[str, float]:
        members = len(room.members)
        started = time.perf_counter()
        joined = await self.join(room)
        await self.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room.room_id,
                sender=self.user,
                type="m.room.message",
                content_json=orjson.dumps({"msgtype": "m.text", "body": "first words"}),
            ),
            timeout=60,
        )
        await until(
            lambda: now([p["content"].get("body") for p in room.received]),
            lambda bodies: "first words" in bodies,
        )
        usable = time.perf_counter() - started
        info = await until(
            lambda: self.info(room),
            lambda i: i.resync_state == events_pb2.RESYNC_STATE_FULL_STATE,
        )
        resynced = time.perf_counter() - started
        assert info.members_known == members + 2, info
        return {"join returned": joined, "usable": usable, "full state": resynced}

    async def full_join(self, room: BigRoom) -> float:
        members = len(room.members)
        seconds = await self.join(room)
        info = await self.info(room)
        assert info.resync_state == events_pb2.RESYNC_STATE_FULL_STATE
        assert info.members_known == members + 2, info
        return seconds

    def stage_seconds(self) -> dict[str, float]:
        """The events service's receive stages so far (mxfed_events_input_stage_seconds_sum)."""
        return self.metric_sums("mxfed_events_input_stage_seconds_sum")

    def metric_sums(self, name: str) -> dict[str, float]:
        """A labelled histogram's sums from the events service's metrics, by its one label."""
        url = f"http://127.0.0.1:{self.mxfed.metrics_ports['events']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                label = line.split('="', 1)[1].split('"', 1)[0]
                found[label] = float(line.rsplit(" ", 1)[1])
        return found

    async def arrivals(self, room: BigRoom, count: int) -> tuple[float, dict[str, float]]:
        """Seconds per member event, each in its own /send, until all are current state;
        and the events service's seconds per event in each receive stage."""
        start_members = (await self.info(room)).members_known
        stages_before = await asyncio.to_thread(self.stage_seconds)
        new = [room.server.user(f"new{i}_{os.getpid()}") for i in range(count)]
        pdus = [room.add(user, MEMBER, user, {"membership": "join"}) for user in new]
        started = time.perf_counter()
        for event_id in pdus:
            await room.push(self.mxfed.federation_url, self.mxfed.server_name, [event_id])
        await until(lambda: self.info(room), lambda i: i.members_known == start_members + count)
        per_event = (time.perf_counter() - started) / count
        stages = await asyncio.to_thread(self.stage_seconds)
        return per_event, {k: (v - stages_before.get(k, 0.0)) / count for k, v in stages.items()}


async def run(args: argparse.Namespace) -> None:
    print(f"signature verification ceiling: {verify_ceiling():,.0f}/s (one core)")
    database_url = await create_database("mxfed_bench_big_rooms")
    server = FakeHomeserver(key_version="bigbench")
    other = FakeHomeserver(key_version="otherbench")
    rooms: dict[str, BigRoom] = {}
    add_big_room_routes(server, other, rooms)
    await server.start()
    await other.start()
    data = Path(tempfile.mkdtemp(prefix="mxfed-bench-big-"))
    mxfed = MxfedProcess(data / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
        bench = Bench(mxfed, server, other)
        bench.rooms = rooms
        n = args.members
        root = mxfed.process.pid if mxfed.process is not None else os.getpid()
        print(f"\npartial-state join of a {n}-member room")
        room = bench.room(n, omit=True)
        cpu_before = await with_postgres_cpu(cpu_seconds(root), database_url)
        for name, seconds in (await bench.partial_join(room)).items():
            print(f"  {name:<14} {seconds:7.2f} s")
        cpu_after = await with_postgres_cpu(cpu_seconds(root), database_url)
        print(f"  CPU seconds: {cpu_used(cpu_before, cpu_after)}")
        stages = await asyncio.to_thread(bench.metric_sums, "mxfed_events_resync_seconds_sum")
        print("  resync stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(stages.items())))
        joins = "mxfed_events_remote_join_seconds_sum"
        join_stages = await asyncio.to_thread(bench.metric_sums, joins)
        print(f"\nfull join of a {n}-member room (the resident does not omit members)")
        big = bench.room(n, omit=False)
        cpu_before = await with_postgres_cpu(cpu_seconds(root), database_url)
        seconds = await bench.full_join(big)
        print(f"  join returned  {seconds:7.2f} s")
        cpu_after = await with_postgres_cpu(cpu_seconds(root), database_url)
        print(f"  CPU seconds: {cpu_used(cpu_before, cpu_after)}")
        after = await asyncio.to_thread(bench.metric_sums, joins)
        spent = {k: v - join_stages.get(k, 0.0) for k, v in sorted(after.items())}
        print("  join stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()))
        if args.arrivals:
            small = bench.room(100, omit=False)
            await bench.full_join(small)
            print(f"\n{args.arrivals} members joining one by one (one /send each)")
            for label, room in ((f"{n}-member room", big), ("100-member room", small)):
                per, stages = await bench.arrivals(room, args.arrivals)
                print(f"  {label:<18} {per * 1000:7.2f} ms per member event end to end")
                state_work = stages.get("checks_and_state", 0) + stages.get("persistence", 0)
                print(
                    f"  {'':<18} {state_work * 1000:7.2f} ms of it in auth, state and storage ("
                    + ", ".join(f"{k} {v * 1000:.2f}" for k, v in sorted(stages.items()))
                    + ")"
                )
        assert mxfed.process is not None
        print("\npeak RSS per mxfed process (VmHWM)")
        for name, mib in sorted(peak_rss_mib(mxfed.process.pid).items()):
            print(f"  {mib:8.0f} MiB  {name}")
    finally:
        await asyncio.to_thread(mxfed.stop)
        await server.stop()
        await other.stop()
        await drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--arrivals", type=int, default=1000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
