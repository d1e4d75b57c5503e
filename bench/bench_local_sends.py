"""Local sends as a bridge makes them, and how soon a remote has each event.

Not a test. Starts a whole mxfed (``mxfed run``, every part as its own process)
on a throw-away database, and a remote homeserver on loopback (the test suite's
``FakeHomeserver``) whose user joins every room; the remote's ``/send`` notes
when each event arrives. Three scenarios, each against mxfed and then against a
Synapse started fresh in the same run (the test extras' matrix-synapse on a
fresh PostgreSQL database of its own on 127.0.0.1:5432, loopback; the remote
joins its rooms with make_join/send_join), after it settled:

* **bridges**: ``--senders`` local users (default 50), each sending
  ``--events`` messages one after another, all at once, spread over
  ``--rooms`` rooms (default 10): events/s accepted (first call → last
  answer), p50/p90 per call, and for every event the delay from its
  acceptance (the call's answer) to its arrival at the remote.
  mxfed's senders call the events service's gRPC API (``PerformSendEvent``
  through ``mxfed.client``, as bridges do); Synapse's call its client-server
  API (``PUT /_matrix/client/v3/rooms/{roomId}/send/...``).
* **open** (open loop): the same senders and rooms, but the events are offered
  at a fixed rate (``--rate``, default 2,000/s, for ``--seconds``, default 3),
  spread evenly over the senders: each send is a task started on schedule,
  not after the sender's previous answer. Events/s accepted, p50/p90 per
  call from the time the send was due (so a server that falls behind shows
  it), and the share delivered within 1 s of acceptance. A server that falls
  more than ``--backlog`` unanswered calls behind (default 500) is not
  offered the rest: the figures say how many were offered.
  With 50 closed-loop senders each waiting for its answer, p50 ≤ 5 ms would
  need ≥ 10,000 events/s; the issue's rate and p50 fit together here.
* **outbound**: one local sender, ``--in-a-row`` messages (default 300) one
  after another into one room: messages/s from the first send to the last PDU
  received by the remote, and send returned → PDU received p50/p90.

Each scenario starts with an ``ANALYZE`` of the server's database (the test cluster runs
without autovacuum; see ``bench_send_http.analyze``). Each prints mxfed's figure,
Synapse's and the ratio; for mxfed also the CPU per event of its parts and of the
PostgreSQL backends serving its database, the stages'
means from the parts' metrics and, per event, acceptance → on an events stream
(a subscriber like the sender, in the bench) → received by the remote. ``--profile DIR`` records
py-spy profiles of the events, sender and keys processes and of the bench's own (the
client side) during mxfed's scenarios (``DIR/<scenario>-<part>.txt``, raw
collapsed stacks; ``--native`` adds C frames); ``--no-synapse`` skips
Synapse. ``bench/bench_outbound.py`` runs the outbound scenario alone.

    .venv/bin/python bench/bench_local_sends.py [--senders 50] [--rooms 10] [--events 40]
        [--rate 2000] [--seconds 3] [--scenario bridges|open|outbound] [--no-synapse]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from synapse_harness import SynapseServer  # noqa: E402

from bench.bench_send_http import (  # noqa: E402
    _metrics,
    analyze,
    backend_cpu,
    join_public_room,
    join_synapse_room,
    start_profilers,
    stop_profilers,
)
from mxfed.client import Client  # noqa: E402
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.fake_homeserver import FakeHomeserver  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402

SCENARIOS = ("bridges", "open", "outbound")
# Where the remote waits for the last event before calling the run failed.
DELIVERY_TIMEOUT = 120.0


class Remote:
    """The remote homeserver's receiving side: when each bench event arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self._waiting: tuple[set[str], asyncio.Event] | None = None

    async def receive(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        now = time.perf_counter()
        for pdu in body.get("pdus", []):
            mark = pdu.get("content", {}).get("bench_id")
            if isinstance(mark, str):
                self.arrived.setdefault(mark, now)
        if self._waiting is not None and self._waiting[0] <= self.arrived.keys():
            self._waiting[1].set()
        return web.json_response({"pdus": {}})

    async def wait_for(self, marks: set[str]) -> None:
        """Until every mark has arrived (TimeoutError, after :data:`DELIVERY_TIMEOUT`,
        names how many did not)."""
        done = asyncio.Event()
        self._waiting = (marks, done)
        if marks <= self.arrived.keys():
            done.set()
        try:
            await asyncio.wait_for(done.wait(), DELIVERY_TIMEOUT)
        except TimeoutError:
            missing = len(marks - self.arrived.keys())
            raise TimeoutError(
                f"{missing} of {len(marks)} events never reached the remote"
            ) from None
        finally:
            self._waiting = None


class StreamWatcher:
    """A stream subscriber like the sender (local senders only): when each bench event
    reached it, which splits acceptance → remote into the events service's part (the
    round's NOTIFY, the hub's read, the gRPC stream) and the sender's."""

    def __init__(self, stub: events_pb2_grpc.EventsStub) -> None:
        self.seen: dict[str, float] = {}
        asked = events_pb2.StreamEventsRequest(after_position=-1, local_senders_only=True)
        self._call = stub.StreamEventBatches(events_pb2.StreamEventBatchesRequest(stream=asked))
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for batch in self._call:
            now = time.perf_counter()
            for item in batch.items:
                if item.WhichOneof("item") == "event":
                    content = orjson.loads(item.event.pdu_json).get("content", {})
                    mark = content.get("bench_id")
                    if isinstance(mark, str):
                        self.seen.setdefault(mark, now)

    def close(self) -> None:
        self._call.cancel()
        self._task.cancel()


@dataclass
class Sends:
    """Per event: when its call started and when it returned (perf_counter)."""

    started: dict[str, float] = field(default_factory=dict)
    returned: dict[str, float] = field(default_factory=dict)


# One local send: (sender index, room index, bench mark) → awaited call.
SendOne = Callable[[int, int, str], Awaitable[None]]


async def run_senders(
    send_one: SendOne, senders: int, rooms: int, per_sender: int, prefix: str
) -> Sends:
    """``senders`` tasks at once, each sending ``per_sender`` events one after another
    into room ``sender % rooms``."""
    sends = Sends()

    async def sender(index: int) -> None:
        for n in range(per_sender):
            mark = f"{prefix}-{index}-{n}"
            sends.started[mark] = time.perf_counter()
            await send_one(index, index % rooms, mark)
            sends.returned[mark] = time.perf_counter()

    await asyncio.gather(*(sender(i) for i in range(senders)))
    return sends


@dataclass
class Offer:
    """An open-loop load: ``rate`` events/s over ``senders`` senders for ``seconds``."""

    rate: float
    seconds: float
    backlog: int  # unanswered calls at most; past it the rest is not offered

    @property
    def events(self) -> int:
        return round(self.rate * self.seconds)


async def offer_at_rate(
    send_one: SendOne, senders: int, rooms: int, offer: Offer, prefix: str
) -> Sends:
    """Event ``k`` is due at ``k / rate`` from sender ``k % senders`` into its room; each
    send is a task started when due, whatever the earlier ones are doing. A call's time
    counts from when it was due (``started``), so a late start is the server's delay or
    the bench's, never hidden. Stops offering when more than ``offer.backlog`` calls are
    unanswered."""
    sends = Sends()
    running: set[asyncio.Task[None]] = set()

    async def one(mark: str, sender: int) -> None:
        await send_one(sender, sender % rooms, mark)
        sends.returned[mark] = time.perf_counter()

    start = time.perf_counter()
    for k in range(offer.events):
        due = start + k / offer.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(running) > offer.backlog:
            break
        mark = f"{prefix}-{k % senders}-{k // senders}"
        sends.started[mark] = due
        task = asyncio.create_task(one(mark, k % senders))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    return sends


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


@dataclass
class Figures:
    rate: float  # events/s accepted (bridges) or first send → last received (outbound)
    call_p50: float  # ms
    call_p90: float
    delivery_p50: float  # ms, call returned → received by the remote
    delivery_p90: float
    delivery_max: float
    within_one_second: float  # share of events delivered within 1 s of acceptance
    cpu: dict[str, float] = field(default_factory=dict)  # cores, per process
    offered: str = ""  # open loop: what was offered, and whether all of it
    events: int = 0  # sent
    measured: float = 0.0  # seconds the cores are the mean of (sending and delivery)

    def lines(self, scenario: str) -> list[str]:
        unit = "msgs/s send → last received" if scenario == "outbound" else "events/s accepted"
        return [
            *([f"  offered: {self.offered}"] if self.offered else []),
            f"  {self.rate:8,.0f} {unit}",
            f"  per call: p50 {self.call_p50:.1f} ms, p90 {self.call_p90:.1f} ms",
            f"  accepted → received by the remote: p50 {self.delivery_p50:.1f} ms,"
            f" p90 {self.delivery_p90:.1f} ms, max {self.delivery_max:.0f} ms,"
            f" {100 * self.within_one_second:.1f}% within 1 s",
        ] + [
            f"  {part:10s} {cores:5.2f} cores,"
            f" {1000 * cores * self.measured / self.events:.2f} ms CPU per event"
            for part, cores in sorted(self.cpu.items())
        ]


def figures(
    scenario: str, sends: Sends, remote: Remote, cpu: dict[str, float], offered: str = ""
) -> Figures:
    calls = [1000 * (sends.returned[m] - sends.started[m]) for m in sends.started]
    delays = [1000 * (remote.arrived[m] - sends.returned[m]) for m in sends.returned]
    first = min(sends.started.values())
    last = max(remote.arrived.values()) if scenario == "outbound" else max(sends.returned.values())
    return Figures(
        offered=offered,
        rate=len(sends.started) / (last - first),
        call_p50=percentile(calls, 0.5),
        call_p90=percentile(calls, 0.9),
        delivery_p50=percentile(delays, 0.5),
        delivery_p90=percentile(delays, 0.9),
        delivery_max=max(delays),
        within_one_second=sum(d <= 1000 for d in delays) / len(delays),
        cpu=cpu,
        events=len(sends.started),
    )


class CpuMeter:
    """CPU seconds of some processes between start() and cores()."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self._before: dict[str, float] = {}
        self._started = 0.0
        self.elapsed = 0.0  # seconds between start() and the last cores()

    def _times(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self.processes.items()}

    def start(self) -> None:
        self._before, self._started = self._times(), time.perf_counter()

    def cores(self) -> dict[str, float]:
        self.elapsed = time.perf_counter() - self._started
        return {name: (t - self._before[name]) / self.elapsed for name, t in self._times().items()}


def mxfed_processes(mxfed: MxfedProcess) -> dict[str, psutil.Process]:
    assert mxfed.process is not None
    found = {}
    for child in psutil.Process(mxfed.process.pid).children(recursive=True):
        command = child.cmdline()
        if "--service" in command:
            part = command[command.index("--service") + 1]
            if part in ("events", "sender", "keys"):
                found[part] = child
    found["bench"] = psutil.Process(os.getpid())
    return found


# What the parts say about where a local send's time goes: (part, metric, labels, label).
STAGES = (
    ("events", "mxfed_events_local_send_seconds", "", "events: a send served"),
    *(
        (
            "events",
            "mxfed_events_local_send_stage_seconds",
            f'stage="{stage}"',
            f"events: send's {stage}",
        )
        for stage in ("room_open", "build", "store", "write", "commit", "stream_round")
    ),
    ("events", "mxfed_events_stream_round_seconds", "", "events: stream position round"),
    ("events", "mxfed_db_pool_acquire_seconds", "", "events: wait for a pooled connection"),
    ("sender", "mxfed_sender_ingest_seconds", "", "sender: ingest statement"),
    ("sender", "mxfed_sender_next_transactions_seconds", "", "sender: next-transactions call"),
    ("sender", "mxfed_sender_transaction_seconds", "", "sender: transaction PUT → 200"),
    ("events", "mxfed_event_loop_lag_histogram_seconds", "", "events: event-loop lag"),
    ("sender", "mxfed_event_loop_lag_histogram_seconds", "", "sender: event-loop lag"),
)


def _sample(text: str, name: str, labels: str) -> float:
    selector = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    found = re.search(rf"^{selector} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def hop_lines(sends: Sends, watcher: StreamWatcher, remote: Remote) -> list[str]:
    """Per event: acceptance → on a stream subscriber → at the remote (p50/p90)."""
    marks = [m for m in sends.returned if m in watcher.seen and m in remote.arrived]
    lines = []
    for label, start, end in (
        ("accepted → on an events stream", sends.returned, watcher.seen),
        ("on the stream → received by the remote", watcher.seen, remote.arrived),
    ):
        delays = [1000 * (end[m] - start[m]) for m in marks]
        if delays:
            lines.append(
                f"    {label:40s} p50 {percentile(delays, 0.5):6.2f} ms,"
                f" p90 {percentile(delays, 0.9):6.2f} ms"
            )
    return lines


def stage_totals(mxfed: MxfedProcess) -> dict[str, tuple[float, float]]:
    """Per stage: (seconds, count) so far; and the local send groups and PDUs sent."""
    texts = {part: _metrics(mxfed, part) for part in ("events", "sender")}
    totals = {
        label: (
            _sample(texts[part], f"{name}_sum", labels),
            _sample(texts[part], f"{name}_count", labels),
        )
        for part, name, labels, label in STAGES
    }
    totals["groups"] = (
        _sample(texts["events"], "mxfed_events_local_send_group_size_sum", ""),
        _sample(texts["events"], "mxfed_events_local_send_group_size_count", ""),
    )
    totals["transactions"] = (
        _sample(texts["sender"], "mxfed_sender_pdus_sent_total", ""),
        _sample(texts["sender"], 'mxfed_sender_transactions_total{outcome="sent"}', ""),
    )
    return totals


def stage_lines(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> list[str]:
    """The stages' means between two :func:`stage_totals`."""
    lines = []
    for label, (seconds, count) in after.items():
        seconds -= before[label][0]
        count -= before[label][1]
        if not count:
            continue
        if label == "groups":
            lines.append(f"    events: sends written together, mean {seconds / count:.1f}")
        elif label == "transactions":
            lines.append(f"    sender: {count:.0f} transactions, {seconds / count:.1f} PDUs each")
        else:
            lines.append(f"    {label:36s} mean {1000 * seconds / count:6.2f} ms ({count:.0f}×)")
    return lines


async def measure(
    scenario: str,
    send_one: SendOne,
    remote: Remote,
    meter: CpuMeter,
    senders: int,
    rooms: int,
    per_sender: int,
    offer: Offer | None = None,
) -> tuple[Figures, Sends]:
    prefix = uuid.uuid4().hex[:8]
    meter.start()
    offered = ""
    if offer is None:
        sends = await run_senders(send_one, senders, rooms, per_sender, prefix)
    else:
        sends = await offer_at_rate(send_one, senders, rooms, offer, prefix)
        offered = (
            f"{offer.rate:,.0f} events/s for {offer.seconds:g} s,"
            f" {len(sends.started):,} of {offer.events:,} offered"
            + (
                ""
                if len(sends.started) == offer.events
                else f" (fell more than {offer.backlog} calls behind: the rest not offered)"
            )
        )
    await remote.wait_for(set(sends.started))
    result = figures(scenario, sends, remote, meter.cores(), offered)
    result.measured = meter.elapsed
    return result, sends


@dataclass
class Load:
    senders: int
    rooms: int
    events: int  # per sender (bridges)
    in_a_row: int  # outbound
    offer: Offer  # open

    def shape(self, scenario: str) -> tuple[int, int, int]:
        """(senders, rooms, events per sender) of a scenario."""
        if scenario in ("bridges", "open"):
            return self.senders, self.rooms, self.events
        return 1, 1, self.in_a_row

    def open_loop(self, scenario: str) -> Offer | None:
        return self.offer if scenario == "open" else None


async def run_mxfed(
    load: Load,
    scenarios: tuple[str, ...],
    remote: FakeHomeserver,
    received: Remote,
    profile: Path | None,
    native: bool = False,
) -> dict[str, Figures]:
    database_url = await create_database("mxfed_bench")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        # The default pool size (the test harness's is smaller): the bench runs one mxfed.
        mxfed = MxfedProcess(
            Path(scratch) / "data",
            database_url,
            extra_config={"log_level": "WARNING", "database_pool_size": 10},
        )
        await asyncio.to_thread(mxfed.start)
        try:
            user = remote.user("bench")
            async with mxfed.channel("events") as channel:
                stub = events_pb2_grpc.EventsStub(channel)
                room_ids = [
                    (await join_public_room(stub, mxfed, remote, user)).room_id
                    for _ in range(load.rooms)
                ]
            watcher_channel = mxfed.channel("events")
            watcher = StreamWatcher(events_pb2_grpc.EventsStub(watcher_channel))
            async with watcher_channel, Client(mxfed.config()) as client:
                local = [f"@bridge{i}:{mxfed.server_name}" for i in range(load.senders)]
                for index, sender in enumerate(local):
                    await client.join(sender, room_ids[index % load.rooms])

                async def send_one(sender: int, room: int, mark: str) -> None:
                    await client.send_message(
                        room_ids[room], local[sender], mark, extra={"bench_id": mark}
                    )

                meter = CpuMeter(mxfed_processes(mxfed))
                # Warm: connections, caches, the remote's transactions.
                await measure("warm-up", send_one, received, meter, load.senders, load.rooms, 2)
                for scenario in scenarios:
                    senders, rooms, per_sender = load.shape(scenario)
                    await analyze(database_url)  # as autovacuum would have by now
                    profilers = (
                        start_profilers(
                            mxfed,
                            profile,
                            ("events", "sender", "keys", "bench"),
                            f"{scenario}-",
                            native,
                        )
                        if profile
                        else []
                    )
                    before = stage_totals(mxfed)
                    postgres_before = await backend_cpu(database_url)
                    started = time.perf_counter()
                    results[scenario], sends = await measure(
                        scenario,
                        send_one,
                        received,
                        meter,
                        senders,
                        rooms,
                        per_sender,
                        load.open_loop(scenario),
                    )
                    postgres = sum(
                        cpu - postgres_before.get(pid, 0.0)
                        for pid, cpu in (await backend_cpu(database_url)).items()
                    )
                    results[scenario].cpu["postgres"] = postgres / (time.perf_counter() - started)
                    stop_profilers(profilers)
                    print(f"\nmxfed, {scenario}:")
                    print("\n".join(results[scenario].lines(scenario)))
                    print("  stages:")
                    print("\n".join(stage_lines(before, stage_totals(mxfed))))
                    print("\n".join(hop_lines(sends, watcher, received)))
                watcher.close()
        finally:
            await asyncio.to_thread(mxfed.stop)
            await drop_database(database_url)
    return results


async def run_synapse(
    load: Load, scenarios: tuple[str, ...], remote: FakeHomeserver, received: Remote
) -> dict[str, Figures]:
    database_url = await create_database("synapse_bench", c_locale=True)
    synapse = SynapseServer(
        extra_config=SynapseServer.postgres_config(database_url), log_level="WARNING"
    )
    results = {}
    try:
        await asyncio.to_thread(synapse.start)
        user = remote.user("bench")
        async with synapse.client() as client:
            _, token = await client.register("bench")
            room_ids = [
                (await join_synapse_room(synapse, token, remote, user)).room_id
                for _ in range(load.rooms)
            ]
            tokens = []
            for index in range(load.senders):
                _, sender_token = await client.register(f"bridge{index}")
                await client.join(sender_token, room_ids[index % load.rooms])
                tokens.append(sender_token)

            async def send_one(sender: int, room: int, mark: str) -> None:
                await client.send_event(
                    tokens[sender],
                    room_ids[room],
                    "m.room.message",
                    {"msgtype": "m.text", "body": mark, "bench_id": mark},
                )

            assert synapse.pid is not None
            meter = CpuMeter({"synapse": psutil.Process(synapse.pid)})
            await asyncio.sleep(5)  # settled: background updates after start and joins done
            await measure("warm-up", send_one, received, meter, load.senders, load.rooms, 2)
            for scenario in scenarios:
                senders, rooms, per_sender = load.shape(scenario)
                await analyze(database_url)  # as for mxfed
                results[scenario], _ = await measure(
                    scenario,
                    send_one,
                    received,
                    meter,
                    senders,
                    rooms,
                    per_sender,
                    load.open_loop(scenario),
                )
                print(f"\nSynapse (PostgreSQL), {scenario}:")
                print("\n".join(results[scenario].lines(scenario)))
    finally:
        await asyncio.to_thread(synapse.stop)
        await drop_database(database_url)
    return results


def compare(scenario: str, ours: Figures, theirs: Figures) -> list[str]:
    def row(label: str, mine: float, synapse: float, higher_is_better: bool) -> str:
        ratio = mine / synapse if higher_is_better else synapse / mine
        return f"  {label:38s} mxfed {mine:8,.1f}  Synapse {synapse:8,.1f}  ratio {ratio:5.2f}x"

    rate = "msgs/s first send → last received" if scenario == "outbound" else "events/s accepted"
    return [
        f"{scenario} (ratio > 1: mxfed better):",
        row(rate, ours.rate, theirs.rate, True),
        row("per call p50, ms", ours.call_p50, theirs.call_p50, False),
        row("accepted → received p50, ms", ours.delivery_p50, theirs.delivery_p50, False),
        row("accepted → received max, ms", ours.delivery_max, theirs.delivery_max, False),
        f"  {'within 1 s of acceptance':38s} mxfed {100 * ours.within_one_second:7.1f}%"
        f"  Synapse {100 * theirs.within_one_second:7.1f}%",
    ]


async def main(
    load: Load,
    scenarios: tuple[str, ...],
    profile: Path | None,
    no_synapse: bool,
    native: bool = False,
) -> None:
    print(f"load average before: {os.getloadavg()[0]:.1f} (2-core machine, shared)")
    received = Remote()
    remote = FakeHomeserver()
    remote.route("PUT", "/_matrix/federation/v1/send/{txn_id}", received.receive)
    await remote.start()
    try:
        ours = await run_mxfed(load, scenarios, remote, received, profile, native)
        theirs = {} if no_synapse else await run_synapse(load, scenarios, remote, received)
    finally:
        await remote.stop()
    print(f"\nsame load, same run (load average now {os.getloadavg()[0]:.1f}):")
    for scenario in scenarios:
        if scenario in theirs:
            print("\n".join(compare(scenario, ours[scenario], theirs[scenario])))
    print(
        "(targets, issue 18: bridges and open >= 2,000 events/s, call p50 <= 5 ms (open loop),"
        " every event at the remote within 1 s; outbound >= 10x Synapse, accepted → received"
        " p50 <= 3 ms)"
    )


def arguments(default_scenarios: tuple[str, ...] = SCENARIOS) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--events", type=int, default=40, help="per sender (bridges)")
    parser.add_argument("--in-a-row", type=int, default=300, help="messages (outbound)")
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s offered (open)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time offered (open)")
    parser.add_argument("--backlog", type=int, default=500, help="unanswered calls at most (open)")
    parser.add_argument(
        "--scenario", choices=SCENARIOS, action="append", help="default: " + " ".join(SCENARIOS)
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the events and sender processes and the bench's own (the client side)"
        " during mxfed's scenarios (py-spy from PyPI on PATH)",
    )
    parser.add_argument(
        "--native", action="store_true", help="with --profile: C frames too (gRPC's core)"
    )
    parser.add_argument("--no-synapse", action="store_true", help="mxfed alone")
    parsed = parser.parse_args()
    parsed.scenario = tuple(parsed.scenario or default_scenarios)
    return parsed


def run(parsed: argparse.Namespace) -> None:
    offer = Offer(parsed.rate, parsed.seconds, parsed.backlog)
    load = Load(parsed.senders, parsed.rooms, parsed.events, parsed.in_a_row, offer)
    asyncio.run(main(load, parsed.scenario, parsed.profile, parsed.no_synapse, parsed.native))


if __name__ == "__main__":
    run(arguments())
