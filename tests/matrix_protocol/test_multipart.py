"""The two-part media answer: what we write reads back, whatever the chunking; bad bodies fail."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from matrix_protocol.multipart import (
    MAX_METADATA_BYTES,
    MediaResponseReader,
    MultipartError,
    boundary_from_content_type,
    encode_content_head,
    encode_location_answer,
    encode_tail,
    multipart_content_type,
    new_boundary,
)


def _answer(boundary: str, content: bytes) -> bytes:
    head = encode_content_head(boundary, "image/png", "inline; filename=cat.png")
    return head + content + encode_tail(boundary)


def _read(body: bytes, boundary: str, sizes: list[int] | None = None) -> tuple[bytes, dict]:
    reader = MediaResponseReader(boundary)
    out = bytearray()
    position = 0
    for size in sizes or [len(body)]:
        out += reader.feed(body[position : position + size])
        position += size
    out += reader.feed(body[position:])
    reader.finish()
    assert reader.metadata == {}
    return bytes(out), reader.content_headers or {}


def test_round_trip_keeps_content_and_headers() -> None:
    boundary = new_boundary()
    content, headers = _read(_answer(boundary, b"\x89PNG data"), boundary)
    assert content == b"\x89PNG data"
    assert headers == {
        "content-type": "image/png",
        "content-disposition": "inline; filename=cat.png",
    }


@settings(max_examples=200, deadline=None)
@given(
    content=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_any_chunking_reads_the_same_content(content: bytes, cuts: list[int]) -> None:
    boundary = "b0undary"
    # Content that contains the boundary text (without the CRLF-- before it) must survive.
    content = content + b"--b0undary" + content[:10] + b"\r\n--b0undar"
    # (The whole delimiter inside the content would end the part: writers pick boundaries
    # that cannot occur, like our 128 random bits.)
    assume(b"\r\n--b0undary" not in content)
    assert _read(_answer(boundary, content), boundary, cuts)[0] == content


def test_a_location_part_carries_no_content() -> None:
    boundary = new_boundary()
    reader = MediaResponseReader(boundary)
    assert reader.feed(encode_location_answer(boundary, "https://cdn.example/x")) == b""
    reader.finish()
    assert reader.location == "https://cdn.example/x"


def test_boundary_parsing() -> None:
    assert boundary_from_content_type(multipart_content_type("abc")) == "abc"
    assert boundary_from_content_type('multipart/mixed; charset=x; boundary="q q"') == "q q"
    for bad in (None, "", "application/json", "multipart/mixed", "multipart/mixed; boundary="):
        with pytest.raises(MultipartError):
            boundary_from_content_type(bad)


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\nContent-Type: text/plain\r\n\r\n{}\r\n--B\r\n\r\nx\r\n--B--\r\n",  # not JSON first
        b"--B\r\nContent-Type: application/json\r\n\r\n[]\r\n--B\r\n\r\nx\r\n--B--\r\n",
        b"--B\r\nContent-Type: application/json\r\n\r\n{x\r\n--B\r\n\r\nx\r\n--B--\r\n",
        b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B--\r\n",  # one part
        b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\n\r\nx\r\n--B\r\n\r\ny\r\n--B--",
        b"--B\r\nbroken header\r\n\r\n{}\r\n--B\r\n\r\nx\r\n--B--\r\n",
        b"--Bjunk\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\n\r\nx\r\n--B--\r\n",
    ],
)
def test_malformed_answers_are_refused(body: bytes) -> None:
    reader = MediaResponseReader("B")
    with pytest.raises(MultipartError):
        reader.feed(body)
        reader.finish()


def test_truncated_answer_is_refused() -> None:
    body = _answer("B", b"content")
    reader = MediaResponseReader("B")
    reader.feed(body[:-6])
    with pytest.raises(MultipartError):
        reader.finish()


def test_metadata_and_headers_are_bounded() -> None:
    huge_metadata = b'{"a":"' + b"x" * MAX_METADATA_BYTES + b'"}'
    body = b"--B\r\nContent-Type: application/json\r\n\r\n" + huge_metadata
    with pytest.raises(MultipartError):
        MediaResponseReader("B").feed(body)
    reader = MediaResponseReader("B")
    reader.feed(b"--B\r\nContent-Type: application/json\r\n")
    with pytest.raises(MultipartError):
        for _ in range(100):
            reader.feed(b"X-Pad: " + b"p" * 1000 + b"\r\n")


def test_header_values_cannot_inject_lines() -> None:
    with pytest.raises(ValueError):
        encode_content_head("B", "text/plain\r\nX-Evil: 1", "attachment")
