"""Recovery time per fault of a whole mxfed under federation traffic both ways.

Not a test (``tests/test_fault_injection.py`` is the bounded one). Starts a
whole mxfed (``mxfed run``) on a PostgreSQL of its own (pgserver in a
temporary directory: it is stopped and restarted here, never the shared
one), a remote homeserver joined to a room, and two loads: the remote's
one-PDU ``/send`` transactions (retried until 200, like a real sender) and a
local actor's ``PerformSendEvent`` calls (retried with their txn id until
acknowledged). Then, ``--rounds`` times, every fault: SIGKILL of each part,
the remote away, ``pg_terminate_backend`` of every mxfed connection, a
PostgreSQL restart. Prints, per fault, the seconds until inbound got a 200
again, an event acknowledged after the fault reached the remote, and every
part reported SERVING (the recovery time is the largest), the median and
worst over the rounds, the answers the remote and the actor saw, and checks
that nothing acknowledged was lost or delivered twice. With
``--replica-outage S`` (default 90) a second events replica runs behind
every caller; at the end it is SIGKILLed, stays away S seconds, comes back,
and the first is SIGKILLed: how soon it is used again, and whether /send
kept answering 200.

    .venv/bin/python bench/bench_faults.py [--rounds 3] [--postgres-down 3]
        [--remote-away 20] [--replica-outage 90]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.fault_injection import FaultStack  # noqa: E402


async def run(rounds: int, postgres_down: float, remote_away: float, replica_outage: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mxfed-bench-faults-") as directory:
        stack = FaultStack(Path(directory), interval=0.05, second_events=replica_outage > 0)
        print(
            "events replicas: " + ("2 (events_address lists both)" if replica_outage > 0 else "1")
        )
        try:
            await stack.start()
            stack.start_loads()
            await stack.settle()
            times: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
            for round_number in range(1, rounds + 1):
                for name, inject in stack.faults():
                    if name == "PostgreSQL restart":
                        result = await stack.restart_postgres(postgres_down)
                    elif name == "remote away":
                        result = await stack.remote_away(remote_away)
                    else:
                        result = await inject()
                    times[name].append(
                        (
                            result.recovery_seconds,
                            result.inbound_seconds,
                            result.outbound_seconds,
                            result.serving_seconds,
                        )
                    )
                    print(
                        f"round {round_number} {result.fault:<40} recovered in "
                        f"{result.recovery_seconds:6.2f} s (inbound 200 "
                        f"{result.inbound_seconds:.2f}, outbound delivered "
                        f"{result.outbound_seconds:.2f}, all SERVING "
                        f"{result.serving_seconds:.2f})",
                        flush=True,
                    )
            if replica_outage > 0:
                seen = await stack.replica_comes_back(replica_outage)
                print(
                    f"second events replica away {replica_outage:g} s, back: the gateway sent it "
                    f"transactions {seen['used_again_after']:.2f} s after it served; then the "
                    "first SIGKILLed: /send answered 200 "
                    f"x{seen['answered_200_while_first_down']:g}, other "
                    f"x{seen['not_200_while_first_down']:g} until it served again",
                    flush=True,
                )
            await stack.stop_loads()
            await stack.check_nothing_lost()
            print()
            print(
                f"{'fault':<24} {'median s':>9} {'worst s':>9}   (recovery: all three conditions)"
            )
            for name, samples in times.items():
                recovery = [sample[0] for sample in samples]
                print(f"{name:<24} {statistics.median(recovery):9.2f} {max(recovery):9.2f}")
            loads = stack.loads
            print()
            print(
                f"inbound: {len(loads.inbound_accepted)} PDUs answered 200 and stored once; "
                f"answers {dict(loads.inbound_statuses)}; "
                f"Retry-After seen {sorted(loads.retry_after)}"
            )
            print(
                f"outbound: {len(loads.outbound_acked)} events acknowledged, each delivered once; "
                f"actor errors {dict(loads.outbound_errors)}"
            )
        finally:
            await stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres-down", type=float, default=3.0, help="seconds PostgreSQL stays down"
    )
    parser.add_argument(
        "--remote-away", type=float, default=20.0, help="seconds the remote is away"
    )
    parser.add_argument(
        "--replica-outage",
        type=float,
        default=90.0,
        help="seconds a second events replica stays away before it must take over (0: one "
        "events replica, no such scenario)",
    )
    arguments = parser.parse_args()
    asyncio.run(
        run(
            arguments.rounds,
            arguments.postgres_down,
            arguments.remote_away,
            arguments.replica_outage,
        )
    )


if __name__ == "__main__":
    main()
