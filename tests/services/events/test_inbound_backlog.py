"""The inbound backlog gauge: PDUs of a transaction's rooms counted in and out at once."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.events.metrics import BACKLOG_TOP, InboundBacklog


def _top() -> dict[str, float]:
    return {
        sample.labels["room_id"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "mxfed_events_inbound_backlog_top_pdus"
        for sample in metric.samples
    }


def test_a_transactions_rooms_are_counted_in_and_out_together() -> None:
    backlog = InboundBacklog()
    rooms = {f"!r{n}:backlog.test": n + 1 for n in range(BACKLOG_TOP + 2)}
    backlog.add(rooms)
    backlog.add({"!r0:backlog.test": 10})
    assert backlog.rooms["!r0:backlog.test"] == 11
    shown = _top()
    assert shown["!r0:backlog.test"] == 11
    assert len([room for room in rooms if room in shown]) == BACKLOG_TOP
    backlog.done(rooms)
    assert backlog.rooms == {"!r0:backlog.test": 10}
    assert {room for room in rooms if room in _top()} == {"!r0:backlog.test"}
    backlog.done({"!r0:backlog.test": 10})
    assert backlog.rooms == {}
