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
that nothing acknowledged was lost or delivered twice.

    .venv/bin/python bench/bench_faults.py [--rounds 3] [--postgres-down 3]
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


async def run(rounds: int, postgres_down: float, remote_away: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mxfed-bench-faults-") as directory:
        stack = FaultStack(Path(directory), interval=0.05)
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
    arguments = parser.parse_args()
    asyncio.run(run(arguments.rounds, arguments.postgres_down, arguments.remote_away))


if __name__ == "__main__":
    main()
