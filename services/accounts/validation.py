"""Shape checks of the key objects of the spec (DeviceKeys, CrossSigningKey,
one-time keys) and of user ids."""

from __future__ import annotations

from typing import Any

from matrix_protocol.server_names import is_valid_server_name
from mxfed.service_errors import BadRequest

JsonDict = dict[str, Any]

CROSS_SIGNING_USAGES = ("master", "self_signing", "user_signing")


def user_server(user_id: Any) -> str | None:
    """The server part of a well-formed user id, else None."""
    if not isinstance(user_id, str) or not user_id.startswith("@") or len(user_id) > 255:
        return None
    localpart, sep, server = user_id[1:].partition(":")
    if not sep or not localpart or not is_valid_server_name(server):
        return None
    return server


def require_user(user_id: str, what: str = "user_id") -> str:
    server = user_server(user_id)
    if server is None:
        raise BadRequest(f"{what} is not a valid user id: {user_id!r}")
    return server


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _signatures(value: Any) -> bool:
    return isinstance(value, dict) and all(_str_map(v) for v in value.values())


def check_device_keys(keys: Any, user_id: str, device_id: str) -> str | None:
    """Why ``keys`` is not a DeviceKeys object of this device, or None when it is."""
    if not isinstance(keys, dict):
        return "device_keys must be an object"
    if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        return "device_keys must name this user and device"
    algorithms = keys.get("algorithms")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        return "device_keys.algorithms must be a list of strings"
    if not _str_map(keys.get("keys")) or not keys["keys"]:
        return "device_keys.keys must map key ids to keys"
    if not _signatures(keys.get("signatures", {})):
        return "device_keys.signatures is malformed"
    return None


def check_cross_signing_key(key: Any, user_id: str, usage: str) -> str | None:
    if not isinstance(key, dict):
        return f"{usage} key must be an object"
    if key.get("user_id") != user_id:
        return f"{usage} key must name this user"
    usages = key.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        return f"{usage} key must have usage {usage!r}"
    if not _str_map(key.get("keys")) or len(key["keys"]) != 1:
        return f"{usage} key must hold exactly one key"
    if not _signatures(key.get("signatures", {})):
        return f"{usage} key signatures are malformed"
    return None


def parse_one_time_keys(keys: Any, what: str) -> list[tuple[str, str, Any]]:
    """``{"<alg>:<key_id>": key}`` → [(algorithm, key_id, key)]."""
    if not isinstance(keys, dict):
        raise BadRequest(f"{what} must be an object", "M_BAD_JSON")
    parsed = []
    for name, key in keys.items():
        algorithm, sep, key_id = name.partition(":")
        if not sep or not algorithm or not key_id:
            raise BadRequest(f"{what}: {name!r} is not <algorithm>:<key_id>")
        if not isinstance(key, (str, dict)):
            raise BadRequest(f"{what}: {name!r} must be a key or a signed key object")
        parsed.append((algorithm, key_id, key))
    return parsed
