"""Moved to ``tests/support/key_servers.py``; kept for work in progress that imports it."""

from tests.support.key_servers import HOUR_MS, FakeKeyServer, now_ms

__all__ = ["HOUR_MS", "FakeKeyServer", "now_ms"]
