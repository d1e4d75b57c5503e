"""Outbound to one remote: one local sender, messages in a row, against Synapse.

Not a test: the ``outbound`` scenario of ``bench/bench_local_sends.py`` alone
(a whole mxfed, then a fresh Synapse on PostgreSQL, in the same run; a remote
homeserver on loopback in every room). Prints messages/s from the first local
send to the last PDU received by the remote, and local send returned → PDU
received p50/p90, for mxfed and Synapse, and the ratio.

    .venv/bin/python bench/bench_outbound.py [--in-a-row 300] [--profile DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_local_sends import arguments, run  # noqa: E402

if __name__ == "__main__":
    run(arguments(default_scenarios=("outbound",)))
