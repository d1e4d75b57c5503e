"""The X-Matrix Authorization header and request signing .

Spec: https://spec.matrix.org/v1.19/server-server-api/#request-authentication
"""

from __future__ import annotations

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_protocol import xmatrix
from matrix_protocol.canonical_json import encode_canonical_json
from matrix_protocol.encoding import decode_base64, encode_base64
from matrix_protocol.signing import SignatureError, generate_signing_key, signing_payload
from matrix_protocol.xmatrix import (
    XMatrixCredentials,
    XMatrixParseError,
    format_xmatrix_header,
    parse_xmatrix_header,
    request_signing_object,
    sign_request,
    verify_request,
    verify_request_credentials,
)

SIGNING_KEY = nacl.signing.SigningKey(decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"))
VERIFY_KEY = SIGNING_KEY.verify_key

GET_URI = "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aother.example&field=displayname"
GET_SIG = "OdZH9DQ+MOp2VLj2en5EZGGlRwd/3tBxWf9W/VeaCM9X23pM8IzRJQ3QMmI2avNx9BEwtFawwmaLLfcM0AIiDA"
PUT_URI = "/_matrix/federation/v1/send/1000000"
PUT_BODY = {"origin": "domain", "origin_server_ts": 1000000, "pdus": []}
PUT_SIG = "r1raEt5xCkqfXOhdlm56V0t4xt70cqPkZaR3fTBmZ2pjeCeTWTxJ6pwVWSbcs9pn8LpoRgnuKEc+tghzncxkBA"


def test_derived_get_vector() -> None:
    obj = request_signing_object("GET", GET_URI, "domain", "other.example")
    assert "content" not in obj
    assert encode_canonical_json(obj) == (
        b'{"destination":"other.example","method":"GET","origin":"domain",'
        b'"uri":"/_matrix/federation/v1/query/profile?user_id=%40alice%3Aother.example'
        b'&field=displayname"}'
    )
    header = sign_request("GET", GET_URI, "domain", "other.example", None, SIGNING_KEY, "ed25519:1")
    assert header == (
        f'X-Matrix origin="domain",destination="other.example",key="ed25519:1",sig="{GET_SIG}"'
    )
    credentials = parse_xmatrix_header(header)
    assert credentials == XMatrixCredentials("domain", "ed25519:1", GET_SIG, "other.example")
    verify_request(credentials, "GET", GET_URI, "other.example", None, VERIFY_KEY)


def test_derived_put_vector() -> None:
    obj = request_signing_object("PUT", PUT_URI, "domain", "other.example", PUT_BODY)
    assert signing_payload(obj) == (
        b'{"content":{"origin":"domain","origin_server_ts":1000000,"pdus":[]},'
        b'"destination":"other.example","method":"PUT","origin":"domain",'
        b'"uri":"/_matrix/federation/v1/send/1000000"}'
    )
    header = sign_request(
        "PUT", PUT_URI, "domain", "other.example", PUT_BODY, SIGNING_KEY, "ed25519:1"
    )
    credentials = parse_xmatrix_header(header)
    assert credentials.sig == PUT_SIG
    verify_request(credentials, "PUT", PUT_URI, "other.example", PUT_BODY, VERIFY_KEY)


def test_empty_body_is_signed_as_content() -> None:
    assert request_signing_object("POST", "/x", "a", "b", {})["content"] == {}


def test_verify_request_failures() -> None:
    credentials = parse_xmatrix_header(
        sign_request("PUT", PUT_URI, "domain", "other.example", PUT_BODY, SIGNING_KEY, "ed25519:1")
    )

    def verify(**changes: object) -> None:
        args: dict = {
            "credentials": credentials,
            "method": "PUT",
            "uri": PUT_URI,
            "destination": "other.example",
            "content": PUT_BODY,
            "verify_key": VERIFY_KEY,
        }
        verify_request(**(args | changes))

    verify()
    for changes in (
        {"method": "POST"},
        {"uri": PUT_URI + "?a=b"},
        {"content": None},
        {"content": {**PUT_BODY, "pdus": [{}]}},
        {"verify_key": generate_signing_key().verify_key},
        {"credentials": XMatrixCredentials("evil", "ed25519:1", PUT_SIG, "other.example")},
        {"credentials": XMatrixCredentials("domain", "ed25519:1", "garbage!", None)},
    ):
        with pytest.raises(SignatureError):
            verify(**changes)
    with pytest.raises(SignatureError, match="request is for 'other.example'"):
        verify(destination="me.example")


def test_missing_destination_uses_our_name() -> None:
    credentials = parse_xmatrix_header(f'X-Matrix origin=domain,key="ed25519:1",sig="{PUT_SIG}"')
    assert credentials.destination is None
    verify_request(credentials, "PUT", PUT_URI, "other.example", PUT_BODY, VERIFY_KEY)


@pytest.mark.parametrize(
    "header",
    [
        'X-Matrix origin="o",key="ed25519:k",sig="s",destination="d"',
        'x-matrix ORIGIN="o" , Key="ed25519:k",\tsig="s",destination="d"',
        "X-MATRIX   origin=o,key=ed25519:k,sig=s,destination=d",
        'X-Matrix origin="\\o",key="ed25519\\:k",sig="\\s",destination="d"',
        'X-Matrix origin="o",key="ed25519:k",signature="s",destination="d",extra="1,2"',
        'X-Matrix unknown=x,origin="o",,key="ed25519:k",sig="s",destination="d",',
        '  X-Matrix origin = "o", key = "ed25519:k", sig = "s", destination = "d"  ',
    ],
)
def test_parse_variants(header: str) -> None:
    assert parse_xmatrix_header(header) == XMatrixCredentials("o", "ed25519:k", "s", "d")


def test_parse_unquoted_old_server_values() -> None:
    credentials = parse_xmatrix_header(
        'X-Matrix origin=example.org:8448,key="ed25519:a",sig="x/y+z"'
    )
    assert credentials == XMatrixCredentials("example.org:8448", "ed25519:a", "x/y+z", None)
    ipv6 = parse_xmatrix_header('X-Matrix origin=[::1]:8448,key="ed25519:a",sig="s"')
    assert ipv6.origin == "[::1]:8448"


def test_parse_quoted_escapes() -> None:
    credentials = parse_xmatrix_header('X-Matrix origin="a\\"b\\\\c",key="k",sig="s"')
    assert credentials.origin == 'a"b\\c'


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('origin="o",key="k",sig="s"', "not an X-Matrix"),
        ('Bearer origin="o",key="k",sig="s"', "not an X-Matrix"),
        ('X-Matrixorigin="o",key="k",sig="s"', "not an X-Matrix"),
        ("X-Matrix", "not an X-Matrix"),
        ("X-Matrix ", "not an X-Matrix"),
        ('X-Matrix key="k",sig="s"', "'origin'"),
        ('X-Matrix origin="o",sig="s"', "'key'"),
        ('X-Matrix origin="o",key="k"', "'sig'"),
        ('X-Matrix origin="",key="k",sig="s"', "'origin'"),
        ('X-Matrix origin="o",key="k",sig="s",destination=""', "empty 'destination'"),
        ('X-Matrix origin="o,key="k",sig="s"', "expected ','"),
        ('X-Matrix origin="o",key="k",sig="s', "unterminated"),
        ('X-Matrix origin="o",key="k",sig="s\\', "unterminated"),
        ('X-Matrix origin="o" key="k",sig="s"', "expected ','"),
        ('X-Matrix origin="o",key,sig="s"', "expected '='"),
        ('X-Matrix origin=,key="k",sig="s"', "missing value"),
        ('X-Matrix origin=a/b,key="k",sig="s"', "expected ','"),
        ('X-Matrix ="o",key="k",sig="s"', "parameter name"),
        ('X-Matrix origin="o",origin="p",key="k",sig="s"', "duplicate parameter 'origin'"),
        ('X-Matrix origin="o",key="k",sig="s",signature="t"', "duplicate parameter 'sig'"),
    ],
)
def test_parse_errors(header: str, message: str) -> None:
    with pytest.raises(XMatrixParseError, match=message):
        parse_xmatrix_header(header)


def test_format_without_destination() -> None:
    assert format_xmatrix_header(XMatrixCredentials("o", "ed25519:k", "s")) == (
        'X-Matrix origin="o",key="ed25519:k",sig="s"'
    )


@pytest.mark.parametrize("bad", ['a"b', "a\\b", "a\r\nb", "a\x00"])
def test_format_refuses_unsendable_values(bad: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        format_xmatrix_header(XMatrixCredentials(bad, "ed25519:k", "s", "d"))


header_values = st.text(
    st.characters(codec="latin-1", exclude_characters='"\\', exclude_categories=("Cc",)),
    min_size=1,
)


@given(header_values, header_values, header_values, st.none() | header_values)
def test_format_parse_round_trip(origin: str, key: str, sig: str, destination: str | None) -> None:
    credentials = XMatrixCredentials(origin, key, sig, destination)
    assert parse_xmatrix_header(format_xmatrix_header(credentials)) == credentials


@given(st.binary(min_size=1, max_size=64), st.sampled_from(["GET", "PUT", "POST"]))
def test_sign_verify_round_trip(body: bytes, method: str) -> None:
    content = {"data": encode_base64(body)} if method != "GET" else None
    header = sign_request(
        method, "/_matrix/x?y=1", "a.example", "b.example", content, SIGNING_KEY, "ed25519:1"
    )
    credentials = parse_xmatrix_header(header)
    verify_request(credentials, method, "/_matrix/x?y=1", "b.example", content, VERIFY_KEY)


def _credentials_for(*keys: tuple[nacl.signing.SigningKey, str]) -> list[XMatrixCredentials]:
    return [
        parse_xmatrix_header(
            sign_request("PUT", PUT_URI, "domain", "other.example", PUT_BODY, key, key_id)
        )
        for key, key_id in keys
    ]


def test_every_header_made_with_a_current_key_must_verify() -> None:
    second = nacl.signing.SigningKey(b"\x02" * 32)
    unknown = nacl.signing.SigningKey(b"\x03" * 32)
    keys = {"ed25519:1": VERIFY_KEY, "ed25519:2": second.verify_key}
    good = _credentials_for((SIGNING_KEY, "ed25519:1"), (second, "ed25519:2"))
    stranger = _credentials_for((unknown, "ed25519:9"))  # a key we do not know: ignored
    verify_request_credentials(good + stranger, "PUT", PUT_URI, "other.example", PUT_BODY, keys)
    # Key 2's header signed by another key: the request is refused though key 1's verifies.
    forged = _credentials_for((SIGNING_KEY, "ed25519:1"), (unknown, "ed25519:2"))
    with pytest.raises(SignatureError):
        verify_request_credentials(forged, "PUT", PUT_URI, "other.example", PUT_BODY, keys)
    with pytest.raises(SignatureError, match="no current key"):
        verify_request_credentials(stranger, "PUT", PUT_URI, "other.example", PUT_BODY, keys)
    with pytest.raises(SignatureError, match="request is for"):
        verify_request_credentials(good, "PUT", PUT_URI, "elsewhere.example", PUT_BODY, keys)


def test_many_headers_encode_the_signed_request_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender chooses how many headers it sends; each must not encode the (maybe
    megabytes of) body again."""
    encoded: list[object] = []

    def counted(obj: dict) -> bytes:
        encoded.append(obj)
        return signing_payload(obj)

    monkeypatch.setattr(xmatrix, "signing_payload", counted)
    headers = _credentials_for(*[(SIGNING_KEY, "ed25519:1")] * 50)
    keys = {"ed25519:1": VERIFY_KEY}
    verify_request_credentials(headers, "PUT", PUT_URI, "other.example", PUT_BODY, keys)
    assert len(encoded) == 1
