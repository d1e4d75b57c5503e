"""Media rules of the content repository: mxc URIs, content types, dispositions, thumbnails.

Spec: Client-Server API "Content repository"
(https://spec.matrix.org/v1.19/client-server-api/#content-repository): ``mxc://``
URIs and their sanitising ("Security considerations"), "Serving inline content"
(the content types that may be served ``inline``), and "Thumbnails" (the usual
sizes, ``crop`` and ``scale``, never upscale, never smaller than asked unless
the content is). Federation serves the same media over
https://spec.matrix.org/v1.19/server-server-api/#content-repository.

A declared content type is trusted for ``Content-Type`` (the spec's advice),
but ``inline`` is granted only when the content's first bytes agree with it:
an upload declared ``image/png`` or ``text/plain`` whose bytes are HTML, SVG
or XML (or anything else than what it claims) is served as an attachment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, unquote

from matrix_protocol.server_names import is_valid_server_name

# How much of the content the sniffer looks at (the first bytes of an upload).
SNIFF_BYTES = 1024

_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]+")
MAX_MEDIA_ID_LENGTH = 255

# https://spec.matrix.org/v1.19/client-server-api/#serving-inline-content
INLINE_CONTENT_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)

# The content types a thumbnail may have (server-server API, /media/thumbnail).
THUMBNAIL_CONTENT_TYPES = frozenset(
    {"image/png", "image/apng", "image/jpeg", "image/gif", "image/webp"}
)

MAX_CONTENT_TYPE_LENGTH = 255
MAX_UPLOAD_NAME_LENGTH = 255

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(
    rf"({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*)"
)
_FILENAME_TOKEN = re.compile(_TOKEN)


class Disposition(StrEnum):
    INLINE = "inline"
    ATTACHMENT = "attachment"


# mxc URIs -------------------------------------------------------------------------


def is_valid_media_id(media_id: str) -> bool:
    """``A-Za-z0-9``, ``_`` and ``-`` only (the spec's rule against path traversal)."""
    return len(media_id) <= MAX_MEDIA_ID_LENGTH and _MEDIA_ID.fullmatch(media_id) is not None


def parse_mxc_uri(uri: str) -> tuple[str, str]:
    """``mxc://server/media_id`` → ``(server, media_id)``; ``ValueError`` when not sane."""
    if not uri.startswith("mxc://"):
        raise ValueError(f"not an mxc:// URI: {uri!r}")
    server, sep, media_id = uri[len("mxc://") :].partition("/")
    if not sep or not is_valid_server_name(server):
        raise ValueError(f"invalid server name in {uri!r}")
    if not is_valid_media_id(media_id):
        raise ValueError(f"invalid media id in {uri!r} (only A-Za-z0-9, _ and - are allowed)")
    return server, media_id


def mxc_uri(server_name: str, media_id: str) -> str:
    return f"mxc://{server_name}/{media_id}"


# Content types ----------------------------------------------------------------------


def normalize_content_type(declared: str | None) -> str | None:
    """A declared ``type/subtype[; params]`` kept as sent, or ``None`` when it is not one.

    Anything that is not a syntactically valid media type (or is longer than
    255 characters) is treated as absent: it could otherwise carry header
    injection or confuse a client.
    """
    if not declared:
        return None
    value = declared.strip()
    if len(value) > MAX_CONTENT_TYPE_LENGTH or _CONTENT_TYPE.fullmatch(value) is None:
        return None
    return value


def content_type_essence(content_type: str) -> str:
    """``Text/HTML; charset=utf-8`` → ``text/html``."""
    return content_type.split(";", 1)[0].strip().lower()


_HTML_STARTS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
    b"<meta",
    b"<object",
    b"<embed",
    b"<form",
    b"<img",
    b"<link",
)
# Tags that make a text body dangerous anywhere in the first bytes (an old
# browser, or a client that ignores the declared type, would run them).
_MARKUP_ANYWHERE = re.compile(
    rb"<\s*(?:script|html|body|iframe|svg|object|embed|meta|link|style|img|a\s)|<\?xml|<!doctype",
    re.IGNORECASE,
)


def _ftyp_type(head: bytes) -> str | None:
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    if brand in (b"avif", b"avis"):
        return "image/avif"
    if brand == b"qt  ":
        return "video/quicktime"
    if brand in (b"M4A ", b"M4B "):
        return "audio/mp4"
    return "video/mp4"


def sniff_content_type(head: bytes) -> str | None:
    """What the first bytes of some content are, by their signature; ``None`` if unknown.

    Markup (HTML, SVG, XML) is recognised after a byte order mark and leading
    whitespace, as browsers do (WHATWG MIME Sniffing, "rules for identifying
    an unknown MIME type").
    """
    signatures: tuple[tuple[bytes, str], ...] = (
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"BM", "image/bmp"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
        (b"\x1a\x45\xdf\xa3", "video/webm"),
        (b"OggS", "audio/ogg"),
        (b"fLaC", "audio/flac"),
        (b"ID3", "audio/mpeg"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1f\x8b", "application/gzip"),
    )
    for signature, content_type in signatures:
        if head.startswith(signature):
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    ftyp = _ftyp_type(head)
    if ftyp:
        return ftyp
    if len(head) >= 2 and head[0] == 0xFF and head[1] in (0xFB, 0xF3, 0xF2, 0xE3):
        return "audio/mpeg"
    if len(head) >= 2 and head[0] == 0xFF and head[1] in (0xF1, 0xF9):
        return "audio/aac"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n\x0c").lower()
    if text.startswith(b"<?xml"):
        return "image/svg+xml" if b"<svg" in text else "text/xml"
    if text.startswith(b"<svg"):
        return "image/svg+xml"
    for start in _HTML_STARTS:
        if text.startswith(start) and text[len(start) : len(start) + 1] in (b" ", b">", b""):
            return "text/html"
    return None


def _looks_like_text(head: bytes) -> bool:
    """No NUL and no other C0 control bytes than tab, CR, LF, FF and ESC."""
    return not any(byte < 0x20 and byte not in (0x09, 0x0A, 0x0C, 0x0D, 0x1B) for byte in head)


def content_agrees(declared_essence: str, head: bytes) -> bool:
    """Whether content starting with ``head`` is what an inline-able type declares.

    Images must carry that image format's signature; audio and video a
    signature of some audio or video container (one container holds either);
    text and JSON must be text with no markup anywhere in the first bytes.
    """
    sniffed = sniff_content_type(head)
    if declared_essence.startswith("image/"):
        aliases = {"image/apng": "image/png"}
        return sniffed == aliases.get(declared_essence, declared_essence)
    if declared_essence.startswith(("video/", "audio/")):
        return sniffed is not None and sniffed.startswith(("video/", "audio/"))
    if declared_essence.startswith("text/") or declared_essence.endswith("json"):
        return sniffed is None and _looks_like_text(head) and not _MARKUP_ANYWHERE.search(head)
    return False


def served_content_type(declared: str | None, head: bytes) -> str:
    """The ``Content-Type`` to serve: the declared type, else the sniffed one, else octet-stream."""
    return declared or sniff_content_type(head) or "application/octet-stream"


def disposition_for(declared: str | None, head: bytes) -> Disposition:
    """``inline`` only for a declared type the spec allows inline whose content agrees."""
    if not declared:
        return Disposition.ATTACHMENT
    essence = content_type_essence(declared)
    if essence in INLINE_CONTENT_TYPES and content_agrees(essence, head):
        return Disposition.INLINE
    return Disposition.ATTACHMENT


# Upload names and Content-Disposition ---------------------------------------------------


def is_valid_upload_name(name: str) -> bool:
    """At most 255 characters, no control characters (they would break the header)."""
    return (
        0 < len(name) <= MAX_UPLOAD_NAME_LENGTH
        and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
        and "\u2028" not in name
        and "\u2029" not in name
    )


def content_disposition(disposition: Disposition, upload_name: str | None) -> str:
    """``inline; filename=cat.png`` or ``attachment; filename*=utf-8''%E2%98%83.txt``.

    RFC 6266: a token as is, plain ASCII quoted, anything else RFC 8187-encoded.
    """
    if not upload_name:
        return str(disposition)
    if _FILENAME_TOKEN.fullmatch(upload_name):
        return f"{disposition}; filename={upload_name}"
    if upload_name.isascii() and '"' not in upload_name and "\\" not in upload_name:
        return f'{disposition}; filename="{upload_name}"'
    return f"{disposition}; filename*=utf-8''{quote(upload_name, safe='')}"


def _disposition_params(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in re.finditer(
        rf";[ \t]*({_TOKEN}\*?)[ \t]*=[ \t]*(\"(?:[^\"\\]|\\.)*\"|[^;]*)", value
    ):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name, raw)
    return params


def filename_from_disposition(value: str | None) -> str | None:
    """The file name in a remote's ``Content-Disposition`` (``filename*`` preferred), if sane."""
    if not value:
        return None
    params = _disposition_params(value)
    name = None
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        if charset.lower() in ("utf-8", "utf8"):
            try:
                name = unquote(encoded, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                name = None
    if name is None:
        name = params.get("filename")
    if name is None or not is_valid_upload_name(name):
        return None
    return name


# Thumbnails -----------------------------------------------------------------------------


class ThumbnailMethod(StrEnum):
    CROP = "crop"
    SCALE = "scale"


@dataclass(frozen=True)
class ThumbnailSpec:
    width: int
    height: int
    method: ThumbnailMethod


# https://spec.matrix.org/v1.19/client-server-api/#thumbnails: "Servers SHOULD
# produce thumbnails with the following dimensions and methods".
STANDARD_THUMBNAILS = (
    ThumbnailSpec(32, 32, ThumbnailMethod.CROP),
    ThumbnailSpec(96, 96, ThumbnailMethod.CROP),
    ThumbnailSpec(320, 240, ThumbnailMethod.SCALE),
    ThumbnailSpec(640, 480, ThumbnailMethod.SCALE),
    ThumbnailSpec(800, 600, ThumbnailMethod.SCALE),
)


@dataclass(frozen=True)
class ThumbnailPlan:
    """How to make a thumbnail: crop ``box`` (left, top, right, bottom) of the source, then
    resize to ``size``; ``box`` is ``None`` for the whole image."""

    size: tuple[int, int]
    box: tuple[int, int, int, int] | None


def plan_thumbnail(source: tuple[int, int], spec: ThumbnailSpec) -> ThumbnailPlan:
    """Scale keeps the aspect ratio and fits inside the box; crop covers the box and cuts the
    overflow evenly from both sides. Never larger than the source (no upscaling)."""
    src_w, src_h = source
    if spec.method is ThumbnailMethod.SCALE:
        factor = min(spec.width / src_w, spec.height / src_h, 1.0)
        return ThumbnailPlan((max(1, round(src_w * factor)), max(1, round(src_h * factor))), None)
    # Crop: the largest box of the requested aspect ratio inside the source, centred.
    if src_w * spec.height > src_h * spec.width:
        box_w, box_h = max(1, round(src_h * spec.width / spec.height)), src_h
    else:
        box_w, box_h = src_w, max(1, round(src_w * spec.height / spec.width))
    left, top = (src_w - box_w) // 2, (src_h - box_h) // 2
    box = (left, top, left + box_w, top + box_h)
    size = (min(spec.width, box_w), min(spec.height, box_h))
    if box == (0, 0, src_w, src_h):
        return ThumbnailPlan(size, None)
    return ThumbnailPlan(size, box)


def source_fits(source: tuple[int, int], spec: ThumbnailSpec) -> bool:
    """Whether the source is no larger than asked (then the original is the thumbnail)."""
    return source[0] <= spec.width and source[1] <= spec.height


def covering_standard_spec(spec: ThumbnailSpec) -> ThumbnailSpec | None:
    """The smallest usual thumbnail that is at least as large as ``spec`` (same aspect for
    crop), so a request close to a usual size is served from the pre-generated one."""
    for standard in STANDARD_THUMBNAILS:
        if standard.method is not spec.method:
            continue
        if standard.width < spec.width or standard.height < spec.height:
            continue
        if (
            spec.method is ThumbnailMethod.CROP
            and standard.width * spec.height != standard.height * spec.width
        ):
            continue
        return standard
    return None
