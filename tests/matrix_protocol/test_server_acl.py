"""Server ACL evaluation.

Spec: https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls
"""

from __future__ import annotations

import pytest

from matrix_protocol.server_acl import glob_matches, server_allowed


def test_no_acl_allows_everyone() -> None:
    assert server_allowed("evil.example", None)


def test_missing_allow_denies_everyone() -> None:
    assert not server_allowed("example.org", {})
    assert not server_allowed("example.org", {"deny": []})


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*", "anything.example", True),
        ("*", "", True),
        ("*.example.org", "matrix.example.org", True),
        ("*.example.org", "example.org", False),
        ("ex?mple.org", "example.org", True),
        ("ex?mple.org", "exmple.org", False),
        ("EXAMPLE.org", "example.ORG", True),
        ("a.b", "axb", False),  # the dot is literal
        ("[abc]", "a", False),  # no character classes
    ],
)
def test_globs(pattern: str, host: str, expected: bool) -> None:
    assert glob_matches(pattern, host) is expected


def test_deny_wins_over_allow() -> None:
    acl = {"allow": ["*"], "deny": ["*.evil.example"]}
    assert server_allowed("good.example", acl)
    assert not server_allowed("bad.evil.example", acl)


def test_port_is_ignored() -> None:
    acl = {"allow": ["example.org"]}
    assert server_allowed("example.org:8448", acl)
    assert not server_allowed("other.org:8448", acl)
    assert server_allowed("127.0.0.1:8448", {"allow": ["127.0.0.1"]})


@pytest.mark.parametrize("server", ["1.2.3.4", "1.2.3.4:8448", "[::1]", "[::1]:8448"])
def test_ip_literals(server: str) -> None:
    assert server_allowed(server, {"allow": ["*"]})
    assert server_allowed(server, {"allow": ["*"], "allow_ip_literals": "no"})
    assert not server_allowed(server, {"allow": ["*"], "allow_ip_literals": False})


def test_non_string_entries_ignored() -> None:
    assert server_allowed("example.org", {"allow": [1, None, "example.org"], "deny": [{}]})
    assert not server_allowed("example.org", {"allow": "example.org"})
