"""A small bounded LRU map for immutable things (state groups, parsed events).

Backed by :class:`mxfed.bounded.BoundedDict`: its size and evictions are
exported as metrics under the cache's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mxfed.bounded import BoundedDict

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(self, name: str, max_size: int) -> None:
        self.max_size = max_size
        self._items: BoundedDict[K, V] = BoundedDict(name, max_size)

    def get(self, key: K) -> V | None:
        return self._items.lookup(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def pop_where(self, stale: Callable[[V], bool]) -> int:
        """Drop every entry whose value is ``stale``; how many. Walks the whole cache."""
        dropped = 0
        # Every key is looked up in the order held: the LRU order stays as it was.
        for key in list(self._items):
            value = self._items.lookup(key)
            if value is not None and stale(value):
                del self._items[key]
                dropped += 1
        return dropped

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
