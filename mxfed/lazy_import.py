"""Modules loaded on first use, so an idle part does not carry what it never calls.

``lazy_module("aiohttp")`` returns the module object at once and runs the
module's code the first time one of its attributes is read (the standard
library's :class:`importlib.util.LazyLoader`). A module already imported is
returned as it is. Parts that make no outbound federation request at idle
save the HTTP client's memory this way (see the README's memory row).
"""

from __future__ import annotations

import importlib.util
import sys
import types


def lazy_module(name: str) -> types.ModuleType:
    """``name``, imported now if it already is, else on first attribute access."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
