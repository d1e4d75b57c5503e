"""Server names and user IDs.

Spec: https://spec.matrix.org/v1.19/appendices/#server-name and https://spec.matrix.org/v1.19/appendices/#user-identifiers
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from matrix_protocol.server_names import (
    is_connectable_port,
    is_ip_literal,
    is_valid_server_name,
    is_valid_user_id,
    parse_server_name,
    server_name_of,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("matrix.org", ("matrix.org", None)),
        ("matrix.org:8888", ("matrix.org", 8888)),
        ("1.2.3.4", ("1.2.3.4", None)),
        ("1.2.3.4:1234", ("1.2.3.4", 1234)),
        ("[1234:5678::abcd]", ("[1234:5678::abcd]", None)),
        ("[1234:5678::abcd]:5678", ("[1234:5678::abcd]", 5678)),
        ("localhost", ("localhost", None)),
        ("MATRIX.org:1", ("MATRIX.org", 1)),
        ("a-b.c-d:65535", ("a-b.c-d", 65535)),
        ("[::ffff:1.2.3.4]:8448", ("[::ffff:1.2.3.4]", 8448)),
        ("example.org:08448", ("example.org", 8448)),
        ("1.2.3", ("1.2.3", None)),  # not four numbers, so a DNS name
        # port = 1*5DIGIT: valid whether or not a TCP port of that number exists
        ("a.org:99999", ("a.org", 99999)),
        ("matrix.org:65536", ("matrix.org", 65536)),
        ("matrix.org:0", ("matrix.org", 0)),
        ("[::1]:00000", ("[::1]", 0)),
    ],
)
def test_valid_server_names(name: str, expected: tuple[str, int | None]) -> None:
    assert parse_server_name(name) == expected
    assert is_valid_server_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ":8448",
        "matrix.org:",
        "matrix.org:123456",
        "matrix.org:-1",
        "matrix.org:８４４８",  # non-ASCII digits
        "matrix.org:84a",
        "matrix..org",
        ".matrix.org",
        "matrix.org.",
        "matrix_org",
        "matrix.org/path",
        "user@matrix.org",
        "1.2.3.256",
        "1.2.3.4:1:2",
        "[1234:5678::abcd",
        "1234:5678::abcd",
        "[1234:5678::abcg]",
        "[fe80::1%eth0]",
        "[1.2.3.4]",
        "[]",
        "a" * 64 + ".org",
        "a." * 127 + "ab",
        "exämple.org",
        "matrix.org ",
    ],
)
def test_invalid_server_names(name: str) -> None:
    assert not is_valid_server_name(name)
    with pytest.raises(ValueError):
        parse_server_name(name)


def test_parse_server_name_non_string() -> None:
    assert not is_valid_server_name(None)  # type: ignore[arg-type]


@given(
    st.lists(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=4),
    st.none() | st.integers(0, 99999),
)
def test_dns_names_round_trip(labels: list[str], port: int | None) -> None:
    # Four labels of one to three digits are an IPv4 literal, not a DNS name
    # ("0.0.0.300" is refused).
    assume(not (len(labels) == 4 and all(label.isdigit() and len(label) <= 3 for label in labels)))
    host = ".".join(labels)
    name = host if port is None else f"{host}:{port}"
    assert parse_server_name(name) == (host, port)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("1.2.3.4", True),
        ("255.255.255.255", True),
        ("[::1]", True),
        ("::1", True),
        ("[1234:5678::abcd]", True),
        ("1.2.3.256", False),
        ("1.2.3", False),
        ("example.org", False),
        ("[example.org]", False),
        ("[::1", False),
        ("fe80::1%eth0", False),
        ("", False),
    ],
)
def test_is_ip_literal(host: str, expected: bool) -> None:
    assert is_ip_literal(host) is expected


@pytest.mark.parametrize(
    "user_id",
    ["@alice:example.org", "@a.b_c=d-e/f+g:example.org:8448", "@0:[::1]", "@x:1.2.3.4"],
)
def test_valid_user_ids(user_id: str) -> None:
    assert is_valid_user_id(user_id)
    assert is_valid_user_id(user_id, historical=False)


@pytest.mark.parametrize(
    "user_id", ["@Alice:example.org", "@日本:example.org", "@a b!:example.org", "@a\U0001f600:x"]
)
def test_historical_user_ids(user_id: str) -> None:
    assert is_valid_user_id(user_id)
    assert not is_valid_user_id(user_id, historical=False)


@pytest.mark.parametrize(
    "user_id",
    [
        "alice:example.org",
        "@alice",
        "@:example.org",
        "@alice:",
        "@alice:bad_server",
        "@al\x00ice:example.org",
        "@al\ud800ice:example.org",
        "#alice:example.org",
        "@" + "a" * 243 + ":example.org",  # 256 bytes
        "@" + "é" * 122 + ":example.org",  # 135 characters but 257 bytes
        None,
    ],
)
def test_invalid_user_ids(user_id: str) -> None:
    assert not is_valid_user_id(user_id)
    assert not is_valid_user_id(user_id, historical=False)


def test_user_id_length_limit_is_in_bytes() -> None:
    assert is_valid_user_id("@" + "a" * 242 + ":example.org")  # exactly 255 bytes


def test_server_name_of() -> None:
    assert server_name_of("@alice:example.org") == "example.org"
    assert server_name_of("@alice:example.org:8448") == "example.org:8448"
    assert server_name_of("!room:[::1]:8448") == "[::1]:8448"
    assert server_name_of("$event:ev.example") == "ev.example"
    with pytest.raises(ValueError, match="no server name"):
        server_name_of("$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg")


def test_user_ids_with_any_five_digit_port_are_valid() -> None:
    assert is_valid_user_id("@bob:a.org:99999")
    assert is_valid_user_id("@bob:[::1]:0")
    assert not is_valid_user_id("@bob:a.org:100000")


@pytest.mark.parametrize(
    ("port", "connectable"),
    [(None, True), (1, True), (8448, True), (65535, True), (0, False), (65536, False)],
)
def test_connectable_ports(port: int | None, connectable: bool) -> None:
    assert is_connectable_port(port) is connectable
