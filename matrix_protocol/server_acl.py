"""Server ACLs: whether a server may take part in a room.

Spec: https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls
evaluated against the ``content`` of the current ``m.room.server_acl``:

1. an IP literal is denied when ``allow_ip_literals`` is ``false``
   (missing or non-boolean ⇒ ``true``);
2. a match in ``deny`` denies;
3. a match in ``allow`` allows;
4. otherwise deny (missing ``allow`` ⇒ nobody).

Globs: ``*`` any sequence (also empty), ``?`` exactly one character,
case-insensitive, matched against the server name without its port.
Non-string entries of ``allow``/``deny`` are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from matrix_protocol.server_names import is_ip_literal

SERVER_ACL_EVENT_TYPE = "m.room.server_acl"


def _host_of(server_name: str) -> str:
    """The server name without its port (an IPv6 literal keeps its brackets)."""
    colon = server_name.rfind(":")
    if colon != -1 and server_name.rfind("]") < colon:
        return server_name[:colon]
    return server_name


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def glob_matches(pattern: str, host: str) -> bool:
    return _glob(pattern).fullmatch(host) is not None


def _patterns(content: Mapping[str, Any], key: str) -> list[str]:
    value = content.get(key)
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, str)]


def server_allowed(server_name: str, acl_content: Mapping[str, Any] | None) -> bool:
    """Whether ``server_name`` passes the ACL ``acl_content`` (None: no ACL ⇒ allowed)."""
    if acl_content is None:
        return True
    host = _host_of(server_name)
    allow_ip_literals = acl_content.get("allow_ip_literals", True)
    if not isinstance(allow_ip_literals, bool):
        allow_ip_literals = True
    if not allow_ip_literals and is_ip_literal(host):
        return False
    if any(glob_matches(pattern, host) for pattern in _patterns(acl_content, "deny")):
        return False
    return any(glob_matches(pattern, host) for pattern in _patterns(acl_content, "allow"))
