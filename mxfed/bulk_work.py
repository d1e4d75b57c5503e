"""The cyclic garbage collector paused while a big batch of events is built.

Decoding, checking and storing a big room's state (tens of thousands of
PDUs) makes hundreds of thousands of container objects that live until the
batch is written. CPython's collector walks every young object again and
again and, each time the heap has grown by a quarter, the whole heap, though
parsed JSON has no reference cycles to find: on a 20,000-member join that
was ~0.5 s of the events process's ~2.7 s of CPU. Reference counting frees
everything as usual meanwhile; only cyclic garbage waits until the last
paused section ends. Sections may overlap (two joins at once): the collector
runs again when the last one ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


class _Pause:
    def __init__(self) -> None:
        self.depth = 0
        self.was_enabled = False


_PAUSE = _Pause()


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic collection inside (event loop thread only; sections may nest or overlap)."""
    if _PAUSE.depth == 0:
        _PAUSE.was_enabled = gc.isenabled()
        gc.disable()
    _PAUSE.depth += 1
    try:
        yield
    finally:
        _PAUSE.depth -= 1
        if _PAUSE.depth == 0 and _PAUSE.was_enabled:
            gc.enable()
