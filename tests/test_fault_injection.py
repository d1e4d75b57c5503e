"""Fault injection: a whole mxfed under federation traffic both ways survives a bad day.

One round of every fault (``tests/support/fault_injection.py``) on a whole
``mxfed run`` with a second events replica that every caller also uses
(``events_address`` lists both), on a PostgreSQL of its own (never the shared
one): SIGKILL of each part, the remote away, ``pg_terminate_backend`` of every
mxfed connection, a PostgreSQL restart; then the second events replica is
SIGKILLed, stays away and is started again, and once the gateway uses it
again the first is SIGKILLed. After each fault inbound ``/send`` answers 200
again, an event acknowledged after the fault reaches the remote and every part
serves; at the end every inbound PDU answered 200 is stored, and every
acknowledged local event reached the remote as one event (never stored twice;
the same PDU may come again in a later transaction after a fault broke the
sender's ingest statement while it was on the wire). Recovery times are
printed (``bench/bench_faults.py`` measures them over more rounds); nothing
here is timed.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fault_injection import FaultStack


async def test_every_fault_is_ridden_through_and_nothing_is_lost_or_stored_twice(
    tmp_path: Path,
) -> None:
    stack = FaultStack(tmp_path, interval=0.1, second_events=True)
    try:
        await stack.start()
        stack.start_loads()
        await stack.settle()
        for _name, inject in stack.faults():
            result = await inject()
            print(
                f"{result.fault}: recovered after {result.recovery_seconds:.2f} s (inbound 200 "
                f"{result.inbound_seconds:.2f}, outbound delivered {result.outbound_seconds:.2f}, "
                f"all SERVING {result.serving_seconds:.2f})"
            )
        assert len(stack.results) == len(stack.faults())
        # During the PostgreSQL restart (6 s down) /send was answered 503 with Retry-After.
        assert stack.loads.inbound_statuses["503"] > 0
        assert stack.loads.retry_after == {"5"}

        # The replica that comes back takes over when the other dies: a call on the
        # dying replica is retried on the other, so /send keeps answering 200.
        seen = await stack.replica_comes_back(outage=5.0)
        print(seen)
        assert seen["answered_200_while_first_down"] > 0
        assert seen["not_200_while_first_down"] == 0

        await stack.stop_loads()
        print(dict(stack.loads.inbound_statuses), dict(stack.loads.outbound_errors))
        await stack.check_nothing_lost()
        assert await stack.all_serving()
        assert stack.loads.inbound_statuses["500"] == 0
    except BaseException:
        if hasattr(stack, "mxfed"):
            print(stack.mxfed.log_tail(150))
        raise
    finally:
        await stack.close()
