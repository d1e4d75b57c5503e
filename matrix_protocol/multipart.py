"""The ``multipart/mixed`` answer of the federation media endpoints, both ways.

Spec: https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1mediadownloadmediaid
(and ``/media/thumbnail``): exactly two parts, RFC 2046 §5.1 framing. The first
part is ``Content-Type: application/json`` metadata (today always ``{}``); the
second is the content with its ``Content-Type`` and ``Content-Disposition``, or
a part with only a ``Location`` header naming where the content can be fetched.

Writing: :func:`encode_content_head` and :func:`encode_tail` frame content that
the caller streams in between (so the size is known up front and nothing is
buffered). Reading: :class:`MediaResponseReader` is incremental; it is fed the
body as it arrives and hands back the content bytes, so a caller can write them
to disk as they come. The JSON metadata and part headers are bounded.

Synapse reads the first part's ``Content-Type`` value as exactly
``application/json`` and takes the boundary as everything after ``boundary=``,
so we write no parameters after it and do not quote it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from matrix_protocol.canonical_json import decode_json, encode_json

MAX_PART_HEADER_BYTES = 16 * 1024
MAX_METADATA_BYTES = 64 * 1024

# RFC 2046 §5.1.1: 1 to 70 of these characters, not ending with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")


class MultipartError(ValueError):
    """The body is not a well-formed two-part media answer."""


def new_boundary() -> str:
    return secrets.token_hex(16)


def multipart_content_type(boundary: str) -> str:
    return f"multipart/mixed; boundary={boundary}"


def boundary_from_content_type(value: str | None) -> str:
    """The boundary of a ``multipart/mixed`` ``Content-Type``; ``MultipartError`` otherwise."""
    if not value:
        raise MultipartError("no Content-Type")
    essence, _, params = value.partition(";")
    if essence.strip().lower() != "multipart/mixed":
        raise MultipartError(f"Content-Type is {essence.strip()!r}, not multipart/mixed")
    match = re.search(r"(?:^|;)\s*boundary\s*=\s*(\"[^\"]*\"|[^;\s]+)", params, re.IGNORECASE)
    if match is None:
        raise MultipartError("multipart/mixed without a boundary")
    boundary = match.group(1).strip('"')
    if not _BOUNDARY.fullmatch(boundary):
        raise MultipartError("invalid multipart boundary")
    return boundary


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} contains a line break")
        lines.append(f"{name}: {value}\r\n".encode())
    return b"".join(lines)


def _metadata_part(boundary: str, metadata: dict[str, Any]) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode()
        + encode_json(metadata)
        + b"\r\n"
    )


def encode_content_head(
    boundary: str,
    content_type: str,
    content_disposition: str,
    metadata: dict[str, Any] | None = None,
    extra_headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """Everything before the content bytes: the metadata part, then the content part's headers."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Disposition", content_disposition),
        *(extra_headers or []),
    ]
    return (
        _metadata_part(boundary, metadata or {})
        + f"--{boundary}\r\n".encode()
        + _header_lines(headers)
        + b"\r\n"
    )


def encode_tail(boundary: str) -> bytes:
    """What follows the content bytes: the close delimiter."""
    return f"\r\n--{boundary}--\r\n".encode()


def encode_location_answer(
    boundary: str, location: str, metadata: dict[str, Any] | None = None
) -> bytes:
    """A whole answer whose second part redirects to ``location``."""
    return (
        _metadata_part(boundary, metadata or {})
        + f"--{boundary}\r\n".encode()
        + _header_lines([("Location", location)])
        + b"\r\n"
        + encode_tail(boundary)
    )


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip() or name != name.strip():
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        try:
            headers[name.decode("ascii").lower()] = value.strip().decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError("part header is not UTF-8") from None
    return headers


@dataclass
class MediaResponseReader:
    """Incremental reader of a two-part media answer.

    ``feed`` returns the content bytes found in what it was given (possibly
    empty); after the content part's headers arrive, ``content_headers`` holds
    them (lower-case names) and ``location`` the redirect, if that is what the
    part carries. ``finish`` checks the body ended with the close delimiter.
    """

    boundary: str
    metadata: dict[str, Any] | None = None
    content_headers: dict[str, str] | None = None
    complete: bool = False
    _buffer: bytes = b"\r\n"  # so a body that opens with the delimiter needs no special case
    _state: str = "preamble"
    _part: int = 0
    _metadata_bytes: bytearray = field(default_factory=bytearray)

    @property
    def location(self) -> str | None:
        return (self.content_headers or {}).get("location")

    @property
    def _delimiter(self) -> bytes:
        return b"\r\n--" + self.boundary.encode("ascii")

    def feed(self, data: bytes) -> bytes:
        if self.complete:
            return b""  # the epilogue is ignored
        self._buffer += data
        content = bytearray()
        while True:
            progressed = self._step(content)
            if not progressed or self.complete:
                break
        return bytes(content)

    def _step(self, content: bytearray) -> bool:
        delimiter = self._delimiter
        if self._state in ("preamble", "body"):
            index = self._buffer.find(delimiter)
            if index < 0:
                keep = len(delimiter) - 1
                if self._state == "body" and len(self._buffer) > keep:
                    self._take_body(self._buffer[:-keep], content)
                    self._buffer = self._buffer[-keep:]
                elif self._state == "preamble" and len(self._buffer) > MAX_PART_HEADER_BYTES:
                    raise MultipartError("no multipart delimiter where one was expected")
                return False
            if self._state == "body":
                self._take_body(self._buffer[:index], content)
                self._end_part()
            self._buffer = self._buffer[index + len(delimiter) :]
            self._state = "after_delimiter"
            return True
        if self._state == "after_delimiter":
            if len(self._buffer) < 2:
                return False
            if self._buffer.startswith(b"--"):
                if self._part != 2:
                    raise MultipartError(f"media answer has {self._part} parts, not 2")
                self.complete = True
                self._buffer = b""
                return False
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                if len(self._buffer) > 256:
                    raise MultipartError("garbage after a multipart delimiter")
                return False
            if self._buffer[:line_end].strip(b" \t"):
                raise MultipartError("garbage after a multipart delimiter")
            self._buffer = self._buffer[line_end + 2 :]
            self._state = "headers"
            return True
        if self._state == "headers":
            # Headers end with an empty line; a part without headers starts with it.
            if self._buffer.startswith(b"\r\n"):
                end, block = 2, b""
            else:
                index = self._buffer.find(b"\r\n\r\n")
                if index < 0:
                    if len(self._buffer) > MAX_PART_HEADER_BYTES:
                        raise MultipartError("multipart part headers are too long")
                    return False
                end, block = index + 4, self._buffer[:index]
            self._start_part(_parse_headers(block))
            self._buffer = self._buffer[end:]
            self._state = "body"
            return True
        raise AssertionError(self._state)

    def _start_part(self, headers: dict[str, str]) -> None:
        self._part += 1
        if self._part == 1:
            content_type = headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != "application/json":
                raise MultipartError("the first part of a media answer must be application/json")
        elif self._part == 2:
            self.content_headers = headers
        else:
            raise MultipartError("media answer has more than 2 parts")

    def _take_body(self, data: bytes, content: bytearray) -> None:
        if self._part == 1:
            self._metadata_bytes += data
            if len(self._metadata_bytes) > MAX_METADATA_BYTES:
                raise MultipartError("media metadata part is too large")
        elif self.location is None:
            content += data

    def _end_part(self) -> None:
        if self._part == 1:
            try:
                metadata = decode_json(bytes(self._metadata_bytes))
            except ValueError as error:
                raise MultipartError(f"media metadata is not JSON: {error}") from None
            if not isinstance(metadata, dict):
                raise MultipartError("media metadata must be a JSON object")
            self.metadata = metadata

    def finish(self) -> None:
        if not self.complete:
            raise MultipartError("media answer ended before its close delimiter")
