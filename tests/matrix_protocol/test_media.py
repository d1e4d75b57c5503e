"""mxc URIs, content types, Content-Disposition and thumbnail geometry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_protocol.media import (
    STANDARD_THUMBNAILS,
    Disposition,
    ThumbnailMethod,
    ThumbnailSpec,
    content_disposition,
    covering_standard_spec,
    disposition_for,
    filename_from_disposition,
    is_valid_media_id,
    is_valid_upload_name,
    normalize_content_type,
    parse_mxc_uri,
    plan_thumbnail,
    served_content_type,
    sniff_content_type,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF"
HTML = b"<!DOCTYPE html><html><script>alert(1)</script>"


def test_mxc_uris_are_sanitised() -> None:
    uri = "mxc://example.org:8448/abc_DEF-123"
    assert parse_mxc_uri(uri) == ("example.org:8448", "abc_DEF-123")
    for bad in (
        "mxc://example.org/../../etc/passwd",
        "mxc://example.org/a%2Fb",
        "mxc://example.org/",
        "mxc://ex ample.org/a",
        "mxc://example.org",
        "https://example.org/a",
        "mxc://example.org/a/b",
        "mxc://example.org/" + "a" * 256,
    ):
        with pytest.raises(ValueError):
            parse_mxc_uri(bad)
    assert not is_valid_media_id("a.b") and not is_valid_media_id("")


def test_sniffing_recognises_formats_and_markup() -> None:
    assert sniff_content_type(PNG) == "image/png"
    assert sniff_content_type(JPEG) == "image/jpeg"
    assert sniff_content_type(b"GIF89a....") == "image/gif"
    assert sniff_content_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"\0\0\0\x18ftypmp42") == "video/mp4"
    assert sniff_content_type(b"\xef\xbb\xbf  \n<HTML><body>") == "text/html"
    assert sniff_content_type(b'<?xml version="1.0"?><svg>') == "image/svg+xml"
    assert sniff_content_type(b"<svg xmlns=...") == "image/svg+xml"
    assert sniff_content_type(b"hello world") is None


@pytest.mark.parametrize(
    ("declared", "content", "expected"),
    [
        ("image/png", PNG, Disposition.INLINE),
        ("image/apng", PNG, Disposition.INLINE),
        ("IMAGE/PNG; x=y", PNG, Disposition.INLINE),
        ("image/jpeg", JPEG, Disposition.INLINE),
        ("text/plain; charset=utf-8", b"just some text\n", Disposition.INLINE),
        ("application/json", b'{"a": 1}', Disposition.INLINE),
        ("video/mp4", b"\0\0\0\x18ftypisom", Disposition.INLINE),
        # A declared type cannot smuggle HTML in: the bytes must agree.
        ("image/png", HTML, Disposition.ATTACHMENT),
        ("image/png", JPEG, Disposition.ATTACHMENT),
        ("text/plain", HTML, Disposition.ATTACHMENT),
        ("text/plain", b"harmless? <script>alert(1)</script>", Disposition.ATTACHMENT),
        ("text/css", b'<?xml version="1.0"?>', Disposition.ATTACHMENT),
        ("application/json", b"\x00\x01binary", Disposition.ATTACHMENT),
        ("video/mp4", HTML, Disposition.ATTACHMENT),
        ("text/html", HTML, Disposition.ATTACHMENT),
        ("image/svg+xml", b"<svg/>", Disposition.ATTACHMENT),
        ("application/pdf", b"%PDF-1.7", Disposition.ATTACHMENT),
        (None, PNG, Disposition.ATTACHMENT),
    ],
)
def test_inline_only_for_allowed_types_whose_bytes_agree(
    declared: str | None, content: bytes, expected: Disposition
) -> None:
    assert disposition_for(declared, content) is expected


def test_content_types_are_validated() -> None:
    assert normalize_content_type(" image/png ") == "image/png"
    assert normalize_content_type('text/plain; charset="utf-8"') == 'text/plain; charset="utf-8"'
    for bad in ("", None, "png", "text/plain\r\nX-Evil: 1", "a/b; c", "a/" + "b" * 300, "a b/c"):
        assert normalize_content_type(bad) is None
    assert served_content_type(None, PNG) == "image/png"
    assert served_content_type(None, b"text") == "application/octet-stream"
    assert served_content_type("text/html", HTML) == "text/html"


def test_content_disposition_encodes_file_names_safely() -> None:
    assert content_disposition(Disposition.INLINE, "cat.png") == "inline; filename=cat.png"
    assert content_disposition(Disposition.ATTACHMENT, None) == "attachment"
    assert content_disposition(Disposition.ATTACHMENT, "my cat.png") == (
        'attachment; filename="my cat.png"'
    )
    assert content_disposition(Disposition.ATTACHMENT, 'a"b;c.txt') == (
        "attachment; filename*=utf-8''a%22b%3Bc.txt"
    )
    assert content_disposition(Disposition.ATTACHMENT, "☃.txt") == (
        "attachment; filename*=utf-8''%E2%98%83.txt"
    )
    assert not is_valid_upload_name("a\r\nb") and not is_valid_upload_name("")


@given(st.text(min_size=1, max_size=60).filter(is_valid_upload_name))
def test_file_names_read_back_from_our_own_header(name: str) -> None:
    header = content_disposition(Disposition.ATTACHMENT, name)
    assert "\r" not in header and "\n" not in header
    assert filename_from_disposition(header) == name


def test_file_names_from_remote_headers() -> None:
    assert filename_from_disposition('inline; filename="a b.png"') == "a b.png"
    assert filename_from_disposition("inline; filename*=UTF-8''%E2%98%83; filename=x") == "☃"
    assert filename_from_disposition("attachment") is None
    assert filename_from_disposition("inline; filename*=utf-8''%FF") is None
    assert filename_from_disposition(None) is None


def test_scale_fits_inside_and_never_upscales() -> None:
    spec = ThumbnailSpec(320, 240, ThumbnailMethod.SCALE)
    assert plan_thumbnail((1000, 500), spec).size == (320, 160)
    assert plan_thumbnail((500, 1000), spec).size == (120, 240)
    assert plan_thumbnail((100, 50), spec).size == (100, 50)
    assert plan_thumbnail((1000, 500), spec).box is None


def test_crop_covers_the_box_from_the_centre() -> None:
    spec = ThumbnailSpec(96, 96, ThumbnailMethod.CROP)
    plan = plan_thumbnail((1000, 500), spec)
    assert plan.size == (96, 96) and plan.box == (250, 0, 750, 500)
    assert plan_thumbnail((50, 80), spec) == plan_thumbnail((50, 80), spec)
    assert plan_thumbnail((50, 80), spec).size == (50, 50)  # no upscaling


@given(
    st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 2000), st.integers(1, 2000),
    st.sampled_from(list(ThumbnailMethod)),
)  # fmt: skip
def test_plans_never_exceed_the_source_or_the_box(
    src_w: int, src_h: int, width: int, height: int, method: ThumbnailMethod
) -> None:
    plan = plan_thumbnail((src_w, src_h), ThumbnailSpec(width, height, method))
    out_w, out_h = plan.size
    assert 1 <= out_w <= src_w and 1 <= out_h <= src_h
    assert out_w <= width and out_h <= height
    if method is ThumbnailMethod.SCALE and (src_w > width or src_h > height):
        assert out_w == width or out_h == height  # fits the box on its limiting side


def test_covering_standard_sizes() -> None:
    assert (
        covering_standard_spec(ThumbnailSpec(64, 64, ThumbnailMethod.CROP))
        == (STANDARD_THUMBNAILS[1])
    )
    assert covering_standard_spec(ThumbnailSpec(100, 50, ThumbnailMethod.CROP)) is None
    assert (
        covering_standard_spec(ThumbnailSpec(300, 200, ThumbnailMethod.SCALE))
        == (STANDARD_THUMBNAILS[2])
    )
    assert covering_standard_spec(ThumbnailSpec(1000, 1000, ThumbnailMethod.SCALE)) is None
