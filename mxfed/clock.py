"""Wall-clock time the way Matrix counts it: milliseconds since the Unix epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Now, in milliseconds since the Unix epoch (``origin_server_ts``, ``valid_until_ts``...)."""
    return int(time.time() * 1000)
