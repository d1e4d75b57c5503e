"""Canonical JSON and the plain JSON helpers.

Spec: https://spec.matrix.org/v1.19/appendices/#canonical-json
"""

from __future__ import annotations

import collections
import enum
import json
import math
from typing import Any

import canonicaljson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_protocol.canonical_json import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    decode_json,
    encode_canonical_json,
    encode_json,
    validate_canonical_json,
)
from matrix_protocol.encoding import decode_base64, encode_base64


def reference(value: Any) -> bytes:
    """The spec's reference encoder."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


SPEC_EXAMPLES = [
    ({}, b"{}"),
    ({"one": 1, "two": "Two"}, b'{"one":1,"two":"Two"}'),
    ({"b": "2", "a": "1"}, b'{"a":"1","b":"2"}'),
    (
        {
            "auth": {
                "success": True,
                "mxid": "@john.doe:example.com",
                "profile": {
                    "display_name": "John Doe",
                    "three_pids": [
                        {"medium": "email", "address": "john.doe@example.org"},
                        {"medium": "msisdn", "address": "123456789"},
                    ],
                },
            }
        },
        b'{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        b'"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        b'{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ({"a": "日本語"}, '{"a":"日本語"}'.encode()),
    ({"本": 2, "日": 1}, '{"日":1,"本":2}'.encode()),
    ({"a": "\u65e5"}, '{"a":"日"}'.encode()),
    ({"a": None}, b'{"a":null}'),
    ({"a": -0, "b": 10000000000}, b'{"a":0,"b":10000000000}'),
]


@pytest.mark.parametrize(("value", "expected"), SPEC_EXAMPLES)
def test_spec_examples(value: Any, expected: bytes) -> None:
    assert encode_canonical_json(value) == expected
    assert encode_canonical_json(value, strict=False) == expected


def test_spec_example_parsed_from_text() -> None:
    # The last spec example as wire text: -0 and 1e10 parse to int 0 and a float.
    parsed = json.loads('{"a": -0, "b": 1e10}')
    assert encode_canonical_json({**parsed, "b": int(parsed["b"])}) == b'{"a":0,"b":10000000000}'


def test_control_characters_and_line_separators() -> None:
    text = "".join(chr(c) for c in range(0x80)) + "\u2028\u2029/\x7f\U0001f600"
    encoded = encode_canonical_json({"s": text})
    assert encoded == reference({"s": text})
    assert b"\\u0000" in encoded and b"\\u001f" in encoded and b"\\u000b" in encoded
    assert b"\\b\\t\\n\\u000b\\f\\r" in encoded
    assert "\u2028\u2029".encode() in encoded  # raw, not escaped
    assert b"\\/" not in encoded


def test_keys_sorted_by_code_point_outside_bmp() -> None:
    # UTF-16 order would put U+10000 (a surrogate pair) before U+FFFF.
    value = {"\U00010000": 1, "\uffff": 2, "\ue000": 3, "\ud7ff": 4, "a": 5, "\U0010ffff": 6}
    encoded = encode_canonical_json(value)
    assert encoded == reference(value)
    text = encoded.decode()
    assert text.index("\uffff") < text.index("\U00010000") < text.index("\U0010ffff")


def test_integer_limits() -> None:
    assert encode_canonical_json(MAX_SAFE_INTEGER) == b"9007199254740991"
    assert encode_canonical_json(-MAX_SAFE_INTEGER) == b"-9007199254740991"
    assert encode_canonical_json(True) == b"true"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": 1.5}, "float 1.5 is not allowed at ['a']"),
        ({"a": 1.0}, "float 1.0 is not allowed at ['a']"),
        ({"a": [0, math.nan]}, "nan is not a JSON number at ['a'][1]"),
        ({"a": math.inf}, "inf is not a JSON number at ['a']"),
        ({"a": -math.inf}, "-inf is not a JSON number"),
        ({"a": {"b": 2**53}}, "integer 9007199254740992 is outside ±(2**53-1) at ['a']['b']"),
        ([-(2**53)], "integer -9007199254740992 is outside ±(2**53-1) at [0]"),
        ({"a": {1: "x"}}, "object key 1 is not a string at ['a'][1]"),
        ({"a": ("t",)}, "tuple is not a JSON type at ['a']"),
        ({"a": b"x"}, "bytes is not a JSON type"),
        ({"a": "\ud800"}, "string contains a lone surrogate at ['a']"),
        ({"\udfff": 1}, "string contains a lone surrogate"),
    ],
)
def test_strict_rejections(value: Any, message: str) -> None:
    with pytest.raises(CanonicalJsonError) as excinfo:
        validate_canonical_json(value)
    assert message in str(excinfo.value)
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1.5},
        {"a": 1e16, "b": 0.1, "c": -2.5e-7},
        {"big": 2**70, "neg": -(2**64), "f": [1.0, 3.0e100]},
        {"depth": 2**63 - 1},
    ],
)
def test_non_strict_matches_reference_encoder(value: Any) -> None:
    assert encode_canonical_json(value, strict=False) == reference(value)


@pytest.mark.parametrize(
    "value", [{"a": math.nan}, {1: 2.5}, {"a": {"b": 1.5, "c": object()}}, ["\ud800", 1.5]]
)
def test_non_strict_still_rejects_non_json(value: Any) -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value, strict=False)


def test_deep_nesting_beyond_orjson_limit() -> None:
    value: Any = "x"
    for _ in range(300):
        value = [value]
    assert encode_canonical_json(value) == reference(value)


def test_too_deep_nesting_is_an_error() -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(CanonicalJsonError, match="nested too deeply"):
        validate_canonical_json(value)


json_keys = st.text()
json_scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
json_values = st.recursive(
    json_scalars | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_strings_match_canonicaljson(text: str) -> None:
    assert encode_canonical_json({text: text}) == canonicaljson.encode_canonical_json({text: text})


@given(json_values)
def test_fast_encoder_matches_canonicaljson(value: Any) -> None:
    encoded = encode_canonical_json(value)
    assert encoded == canonicaljson.encode_canonical_json(value)
    assert encoded == reference(value)
    assert decode_json(encoded) == value


loose_values = st.recursive(
    json_scalars | st.text() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@given(loose_values)
def test_non_strict_matches_reference(value: Any) -> None:
    encoded = encode_canonical_json(value, strict=False)
    assert encoded == reference(value)
    assert encoded == canonicaljson.encode_canonical_json(value)


def test_subclasses_of_json_types() -> None:
    class Text(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 100

    value = collections.OrderedDict([(Text("b"), [Level.HIGH, Text("é")]), ("a", True)])
    validate_canonical_json(value)
    assert encode_canonical_json(value) == '{"a":true,"b":[100,"é"]}'.encode()
    assert encode_canonical_json(Text("x")) == b'"x"'


def test_encode_json_is_compact() -> None:
    assert encode_json({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()
    # Old rooms can hold integers orjson cannot write.
    assert json.loads(encode_json({"a": 2**70})) == {"a": 2**70}


def test_decode_json() -> None:
    assert decode_json('{"a": [1, "x"]}') == {"a": [1, "x"]}
    assert decode_json(b'{"a": 1, "a": 2}') == {"a": 2}
    for literal in (b"NaN", b"[Infinity]", b"-Infinity", b"{"):
        with pytest.raises(ValueError):
            decode_json(literal)


def test_decode_json_keeps_big_integers_exact() -> None:
    big = b'{"a": 123456789012345678901234567890, "b": -9223372036854775809, "c": 1.5}'
    assert decode_json(big) == {
        "a": 123456789012345678901234567890,
        "b": -9223372036854775809,
        "c": 1.5,
    }
    with pytest.raises(ValueError):
        decode_json(b"[1234567890123456789012, NaN]")
    # A long digit run inside a string takes the exact parser too.
    assert decode_json('{"s": "12345678901234567890", "n": 7}') == {
        "s": "12345678901234567890",
        "n": 7,
    }


# Base64 (https://spec.matrix.org/v1.19/appendices/#unpadded-base64)

BASE64_VECTORS = [
    (b"", ""),
    (b"f", "Zg"),
    (b"fo", "Zm8"),
    (b"foo", "Zm9v"),
    (b"foob", "Zm9vYg"),
    (b"fooba", "Zm9vYmE"),
    (b"foobar", "Zm9vYmFy"),
]


@pytest.mark.parametrize(("data", "encoded"), BASE64_VECTORS)
def test_base64_spec_vectors(data: bytes, encoded: str) -> None:
    assert encode_base64(data) == encoded
    assert decode_base64(encoded) == data
    assert decode_base64(encoded + "=" * (-len(encoded) % 4)) == data


def test_base64_url_safe() -> None:
    data = bytes([0xFB, 0xFF, 0xBF])
    assert encode_base64(data) == "+/+/"
    assert encode_base64(data, urlsafe=True) == "-_-_"
    assert decode_base64("-_-_") == data
    assert decode_base64("+/+/") == data


@pytest.mark.parametrize("garbage", ["Z", "Zm9v!", "Zm 9v", "Zg=x", "日本", "Zm9vY"])
def test_base64_garbage(garbage: str) -> None:
    with pytest.raises(ValueError):
        decode_base64(garbage)


def test_base64_non_string() -> None:
    with pytest.raises(ValueError):
        decode_base64(None)  # type: ignore[arg-type]


@given(st.binary(), st.booleans())
def test_base64_round_trip(data: bytes, urlsafe: bool) -> None:
    encoded = encode_base64(data, urlsafe=urlsafe)
    assert "=" not in encoded
    assert decode_base64(encoded) == data
