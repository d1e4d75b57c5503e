"""Resident memory and idle CPU of a whole idle mxfed (supervisor, every part). Not a test.

Both ways to run it: supervised processes (``mxfed run``, target <= 400 MiB)
and every part in one process (``mxfed run --single-process``, <= 150 MiB); the
supervised run also with accounts as its own process (``accounts_in_keys: false``,
as compose and Kubernetes run it), the price of one more process.

Per part: RSS, PSS and USS, and the CPU it spends idle over a 10 s window
(background loops, heartbeats, leases). The Kubernetes resource requests in
deploy/kubernetes/ are sized from the RSS of parts run alone.

The whole stack is summed twice. The RSS sum counts a page shared by several
processes once in each: the shared libraries, and, since the supervised parts
are forked from one process that imported what they all import
(mxfed/part_starter.py), that memory too. The PSS sum divides each shared page
among the processes that share it, so it is the memory the stack takes from
the machine; the target is compared with it.

Measured twice: on the first start (which also generates the TLS pair, so the
gateway has the crypto library loaded) and after a restart on the same data
directory (the steady state of a running server).

    .venv/bin/python bench/bench_idle_memory.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402

IDLE_WINDOW = 10.0  # seconds over which idle CPU is measured


def main() -> None:
    measure(single_process=False)
    measure(single_process=False, accounts_apart=True)
    measure(single_process=True)


def measure(single_process: bool, accounts_apart: bool = False) -> None:
    mode = "mxfed run --single-process" if single_process else "mxfed run"
    if accounts_apart:
        mode += " (accounts_in_keys: false)"
    target = 150 if single_process else 400
    database_url = asyncio.run(create_database("mxfed_bench"))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            mxfed = MxfedProcess(
                Path(scratch) / "data",
                database_url,
                single_process=single_process,
                extra_config={"accounts_in_keys": False} if accounts_apart else {},
            )
            for label in (f"{mode}, first start", f"{mode}, after a restart"):
                mxfed.start()
                try:
                    time.sleep(5)  # settle: background tasks started, caches warm
                    assert mxfed.process is not None
                    supervisor = psutil.Process(mxfed.process.pid)
                    rss_total = pss_total = 0
                    print(f"{label}:")
                    processes = [supervisor, *supervisor.children(recursive=True)]
                    cpu_before = [sum(p.cpu_times()[:2]) for p in processes]
                    time.sleep(IDLE_WINDOW)
                    for process, before in zip(processes, cpu_before, strict=True):
                        memory = process.memory_full_info()
                        idle_cpu = (sum(process.cpu_times()[:2]) - before) / IDLE_WINDOW
                        rss_total += memory.rss
                        pss_total += memory.pss
                        name = " ".join(process.cmdline()[-2:])
                        print(
                            f"  {name:32s} RSS {memory.rss / 2**20:5.1f}"
                            f"  PSS {memory.pss / 2**20:5.1f}  USS {memory.uss / 2**20:5.1f} MiB"
                            f"  idle CPU {idle_cpu * 1000:5.1f} millicores"
                        )
                    print(
                        f"  whole stack idle: {pss_total / 2**20:.0f} MiB PSS"
                        f" (target <= {target} MiB), {rss_total / 2**20:.0f} MiB RSS summed"
                    )
                finally:
                    mxfed.stop()
    finally:
        asyncio.run(drop_database(database_url))


if __name__ == "__main__":
    main()
