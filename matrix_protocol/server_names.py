"""Server names and the IDs built on them.

Spec: appendices "Server Name" and "User Identifiers" incl. "Historical
User IDs" (https://spec.matrix.org/v1.19/appendices/#server-name). Server
names compare case-sensitively, so nothing here lower-cases or otherwise
normalises. The port is what the grammar says, ``1*5DIGIT``: ``99999`` and
``0`` are valid in a server name (and so in user IDs inside events) even
though nothing can be reached there; :func:`is_connectable_port` is for
whoever wants to connect.
"""

from __future__ import annotations

import ipaddress
import re

_PORT = re.compile(r"[0-9]{1,5}")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
# Labels of letters, digits and hyphens. The grammar allows hyphens anywhere
# in a label, so leading/trailing hyphens are accepted; empty labels are not.
_DNS_LABEL = re.compile(r"[A-Za-z0-9-]{1,63}")
_MAX_DNS_NAME = 255
_MAX_USER_ID_BYTES = 255
_MAX_ALIAS_BYTES = 255
_USER_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+")


def _is_ipv4(host: str) -> bool:
    return _IPV4.fullmatch(host) is not None and all(int(octet) <= 255 for octet in host.split("."))


def _is_ipv6(address: str) -> bool:
    # The character check keeps out zone IDs ("%eth0"), which ipaddress allows.
    if _IPV6_CHARS.fullmatch(address) is None:
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _is_dns_name(host: str) -> bool:
    return len(host) <= _MAX_DNS_NAME and all(
        _DNS_LABEL.fullmatch(label) for label in host.split(".")
    )


def _is_valid_host(host: str) -> bool:
    if host.startswith("["):
        return host.endswith("]") and _is_ipv6(host[1:-1])
    # Four dot-separated numbers read as an IPv4 address, so "1.2.3.999" is
    # rejected rather than looked up in DNS.
    if _IPV4.fullmatch(host):
        return _is_ipv4(host)
    return _is_dns_name(host)


def parse_server_name(name: str) -> tuple[str, int | None]:
    """Split ``name`` into host and optional port; raises :class:`ValueError`.

    An IPv6 host keeps its brackets (``"[::1]"``), so ``host`` or
    ``f"{host}:{port}"`` reproduces the name exactly.
    """
    if not isinstance(name, str):
        raise ValueError(f"server name must be a string, not {type(name).__name__}")  # noqa: TRY004
    host, port = name, None
    colon = name.rfind(":")
    # A colon inside the IPv6 brackets is part of the address, not a port.
    if colon != -1 and name.rfind("]") < colon:
        host, port_text = name[:colon], name[colon + 1 :]
        if _PORT.fullmatch(port_text) is None:
            raise ValueError(f"invalid port in server name {name!r}")
        port = int(port_text)
    if not _is_valid_host(host):
        raise ValueError(f"invalid server name {name!r}")
    return host, port


def is_connectable_port(port: int | None) -> bool:
    """Whether a server name's port (None: the default one) is a TCP port one can connect to."""
    return port is None or 1 <= port <= 65535


def is_valid_server_name(name: str) -> bool:
    """Whether ``name`` matches the server-name grammar."""
    try:
        parse_server_name(name)
    except ValueError:
        return False
    return True


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 address or an IPv6 address, bracketed or not."""
    if host.startswith("[") and host.endswith("]"):
        return _is_ipv6(host[1:-1])
    return _is_ipv4(host) or _is_ipv6(host)


def is_valid_user_id(user_id: str, *, historical: bool = True) -> bool:
    """Whether ``user_id`` is ``@localpart:server_name`` and at most 255 UTF-8 bytes.

    With ``historical`` (the default, needed for existing rooms) the localpart
    may hold any code point except ``:``, NUL and surrogates; otherwise only
    the current grammar ``[a-z0-9._=-/+]`` is allowed.
    """
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    try:
        if len(user_id.encode("utf-8")) > _MAX_USER_ID_BYTES:
            return False
    except UnicodeEncodeError:  # lone surrogate
        return False
    localpart, colon, server_name = user_id[1:].partition(":")
    if not colon or not localpart or not is_valid_server_name(server_name):
        return False
    if historical:
        return "\x00" not in localpart
    return _USER_LOCALPART.fullmatch(localpart) is not None


def is_valid_room_alias(alias: str) -> bool:
    """Whether ``alias`` is ``#localpart:server_name`` and at most 255 UTF-8 bytes.

    Spec: appendices, "Room Aliases"
    (https://spec.matrix.org/v1.19/appendices/#room-aliases): the localpart may
    hold any code point except ``:``, NUL and surrogates.
    """
    if not isinstance(alias, str) or not alias.startswith("#"):
        return False
    try:
        if len(alias.encode("utf-8")) > _MAX_ALIAS_BYTES:
            return False
    except UnicodeEncodeError:  # lone surrogate
        return False
    localpart, colon, server_name = alias[1:].partition(":")
    if not colon or not localpart or "\x00" in localpart:
        return False
    return is_valid_server_name(server_name)


def server_name_of(id: str) -> str:
    """The server part of ``@user:server``, ``!room:server``, ``$event:server`` etc.

    Raises :class:`ValueError` when ``id`` has no ``:``. The server part is
    not validated.
    """
    _, colon, server_name = id.partition(":")
    if not colon:
        raise ValueError(f"{id!r} has no server name part")
    return server_name
