"""A small bounded LRU map for immutable things (state groups, parsed events).

Backed by :class:`mxfed.bounded.BoundedDict`: its size and evictions are
exported as metrics under the cache's name.
"""

from __future__ import annotations

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

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
