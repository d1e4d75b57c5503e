"""Bounded maps and a rate limit, for anything remote input can make grow or happen.

Every in-memory map keyed by something a remote server chooses (its name,
its key ids, the names it sends us to) is a :class:`BoundedDict`: least
recently used entries go first once it holds ``max_size``, and each map's
size and evictions are exported as Prometheus metrics under its name.
:class:`TokenBucket` caps how often remote input may make us do something
expensive (fetch an unknown server's keys).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import TypeVar

from prometheus_client import Counter, Gauge

K = TypeVar("K")
V = TypeVar("V")

# Summed over the instances of one name in a process (each client has its own caches).
ENTRIES = Gauge("mxfed_bounded_cache_entries", "Entries held by bounded caches", ["cache"])
EVICTIONS = Counter(
    "mxfed_bounded_cache_evictions_total",
    "Entries a bounded cache dropped (least recently used) to stay within its size",
    ["cache"],
)


class BoundedDict(MutableMapping[K, V]):
    """A dict that keeps at most ``max_size`` entries, dropping the least recently used."""

    def __init__(self, name: str, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.name = name
        self.max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._entries = ENTRIES.labels(name)
        self._evictions = EVICTIONS.labels(name)

    def __getitem__(self, key: K) -> V:
        value = self._items[key]
        self._items.move_to_end(key)
        return value

    def lookup(self, key: K) -> V | None:
        """``get`` without a ``KeyError`` raised and caught per miss (hot caches miss often)."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        if key in self._items:
            self._items.move_to_end(key)
        else:
            self._entries.inc()
        self._items[key] = value
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)
            self._evictions.inc()
            self._entries.dec()

    def __delitem__(self, key: K) -> None:
        del self._items[key]
        self._entries.dec()

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class TokenBucket:
    """At most ``rate`` events per second on average, ``burst`` at once."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
