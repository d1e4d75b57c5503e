"""``mxfed top``: a live view of the running stack, for operators who would rather look.

Every ``--interval`` seconds it reads each part's Prometheus metrics (its
``<part>_metrics_listen`` address) and asks each part's health, then shows:
events in and out per second (PDUs received over federation, PDUs and EDUs
delivered), the rooms with the largest inbound backlog, the longest outbound
queues, and each part with its health, event-loop lag, database pool use and
internal calls per second. Rates are over the last interval, so the first
frame has none. ``--once`` prints one frame (two reads ``--interval`` apart)
and exits; ``--json`` prints each frame as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from mxfed.commands.common import add_json_flag
from mxfed.commands.health import _status
from mxfed.config import Config
from mxfed.internal_plane import client_address

TOP_ROWS = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("top", help="a live view of the running stack")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    add_json_flag(parser)
    parser.set_defaults(handler=run_top)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class PartReading:
    part: str
    health: str = "UNKNOWN"
    samples: Samples = field(default_factory=dict)
    error: str = ""

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and all((k, v) in sample_labels for k, v in labels.items())
        )

    def labelled(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for (sample, sample_labels), value in self.samples.items():
            if sample == name:
                key = dict(sample_labels).get(label, "")
                found[key] = found.get(key, 0.0) + value
        return found


def _scrape(address: str) -> Samples:
    url = f"http://{client_address(address)}/metrics"
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own address
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def read_parts(config: Config) -> list[PartReading]:
    async def one(part: str) -> PartReading:
        reading = PartReading(part)
        address = (
            config.gateway_metrics_listen if part == "gateway" else config.metrics_address(part)
        )
        try:
            reading.samples = await asyncio.to_thread(_scrape, address)
        except OSError as exc:
            reading.error = f"metrics at {address}: {exc}"
        reading.health = await _status(config, part, None)
        return reading

    return list(await asyncio.gather(*(one(part) for part in config.run)))


def _by_part(readings: list[PartReading]) -> dict[str, PartReading]:
    return {r.part: r for r in readings}


def frame(before: list[PartReading], after: list[PartReading], seconds: float) -> dict[str, Any]:
    """What one frame shows, from two readings ``seconds`` apart."""
    old, new = _by_part(before), _by_part(after)

    def rate(part: str, name: str, **labels: str) -> float:
        if part not in old or part not in new or seconds <= 0:
            return 0.0
        change = new[part].total(name, **labels) - old[part].total(name, **labels)
        return max(0.0, change) / seconds

    events = new.get("events", PartReading("events"))
    sender = new.get("sender", PartReading("sender"))
    backlog = events.labelled("mxfed_events_inbound_backlog_top_pdus", "room_id")
    queues = sender.labelled("mxfed_sender_top_queue_depth", "destination")
    parts = []
    for reading in after:
        part = reading.part
        parts.append(
            {
                "part": part,
                "health": reading.health,
                "loop_lag_ms": round(reading.total("mxfed_event_loop_lag_seconds") * 1000, 1),
                "db_in_use": int(reading.total("mxfed_db_pool_in_use")),
                "db_size": int(reading.total("mxfed_db_pool_size")),
                "rpcs_per_second": round(rate(part, "mxfed_grpc_server_handled_total"), 1),
                "error": reading.error,
            }
        )
    return {
        "ts": int(time.time() * 1000),
        "pdus_in_per_second": round(rate("events", "mxfed_events_pdus_received_total"), 1),
        "pdus_out_per_second": round(rate("sender", "mxfed_sender_pdus_sent_total"), 1),
        "edus_out_per_second": round(rate("sender", "mxfed_sender_edus_sent_total"), 1),
        "federation_requests_per_second": round(rate("gateway", "mxfed_gateway_requests_total"), 1),
        "inbound_backlog": int(events.total("mxfed_events_inbound_backlog_pdus")),
        "queued_pdus": int(sender.total("mxfed_sender_queued_pdus")),
        "busiest_rooms": sorted(backlog.items(), key=lambda item: -item[1])[:TOP_ROWS],
        "longest_queues": sorted(queues.items(), key=lambda item: -item[1])[:TOP_ROWS],
        "parts": parts,
    }


def render(view: dict[str, Any]) -> str:
    lines = [
        f"mxfed top  {time.strftime('%H:%M:%S')}",
        "",
        f"in  {view['pdus_in_per_second']:>8} PDUs/s   {view['federation_requests_per_second']:>8} "
        f"requests/s   backlog {view['inbound_backlog']}",
        f"out {view['pdus_out_per_second']:>8} PDUs/s   {view['edus_out_per_second']:>8} "
        f"EDUs/s       queued {view['queued_pdus']}",
        "",
        "busiest rooms (inbound backlog)",
    ]
    lines += [f"  {count:>6.0f}  {room}" for room, count in view["busiest_rooms"]] or ["  -"]
    lines += ["", "longest outbound queues"]
    lines += [f"  {count:>6.0f}  {dest}" for dest, count in view["longest_queues"]] or ["  -"]
    lines += ["", f"  {'part':<9} {'health':<12} {'loop lag':>9} {'db':>7} {'rpc/s':>7}"]
    for part in view["parts"]:
        db = f"{part['db_in_use']}/{part['db_size']}"
        lines.append(
            f"  {part['part']:<9} {part['health']:<12} {part['loop_lag_ms']:>7}ms "
            f"{db:>7} {part['rpcs_per_second']:>7}"
            + (f"  {part['error']}" if part["error"] else "")
        )
    return "\n".join(lines)


async def run_top(args: argparse.Namespace, config: Config) -> int:
    interval = max(0.2, args.interval)
    before = await read_parts(config)
    while True:
        await asyncio.sleep(interval)
        after = await read_parts(config)
        view = frame(before, after, interval)
        if args.json:
            print(orjson.dumps(view).decode(), flush=True)
        else:
            if not args.once and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")
            print(render(view), flush=True)
        if args.once:
            return 0 if all(p["health"] == "SERVING" for p in view["parts"]) else 1
        before = after
