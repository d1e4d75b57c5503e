"""mxfed top's frame: rates over the interval, the top rooms and queues, per-part figures."""

from __future__ import annotations

from mxfed.commands.top import PartReading, frame, render


def test_a_frame_shows_rates_over_the_interval_and_the_top_rows() -> None:
    def events(received: float) -> PartReading:
        return PartReading(
            "events",
            "SERVING",
            {
                ("mxfed_events_pdus_received_total", (("outcome", "accepted"),)): received,
                ("mxfed_events_pdus_received_total", (("outcome", "dropped"),)): 2.0,
                ("mxfed_events_inbound_backlog_top_pdus", (("room_id", "!busy:x"),)): 40.0,
                ("mxfed_events_inbound_backlog_top_pdus", (("room_id", "!calm:x"),)): 3.0,
                ("mxfed_events_inbound_backlog_pdus", ()): 43.0,
                ("mxfed_db_pool_in_use", ()): 2.0,
                ("mxfed_db_pool_size", ()): 5.0,
                ("mxfed_event_loop_lag_seconds", ()): 0.012,
            },
        )

    sender = PartReading(
        "sender",
        "NOT_SERVING",
        {("mxfed_sender_top_queue_depth", (("destination", "a.org"),)): 9.0},
    )
    view = frame([events(100.0), sender], [events(140.0), sender], 2.0)
    assert view["pdus_in_per_second"] == 20.0
    assert view["busiest_rooms"] == [("!busy:x", 40.0), ("!calm:x", 3.0)]
    assert view["longest_queues"] == [("a.org", 9.0)]
    assert view["inbound_backlog"] == 43
    [row] = [p for p in view["parts"] if p["part"] == "events"]
    assert (row["db_in_use"], row["db_size"], row["loop_lag_ms"]) == (2, 5, 12.0)
    text = render(view)
    assert "!busy:x" in text and "NOT_SERVING" in text
