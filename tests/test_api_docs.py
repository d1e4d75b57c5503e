"""docs/api.md is generated from the protos' comments, kept current, and leaves nothing out."""

from __future__ import annotations

from mxfed.apidoc import API_PAGE, generate


def test_api_reference_is_current() -> None:
    page, _ = generate()
    assert API_PAGE.read_text() == page, "docs/api.md is stale: run `python -m mxfed.apidoc`"


def test_every_rpc_and_field_is_documented() -> None:
    """A `//` comment above (or after) every rpc and message field in protos/."""
    page, missing = generate()
    assert "| `PerformSendEvent` |" in page
    assert "| `InputTransaction` |" in page and "`gateway`" in page
    assert [m.what for m in missing] == []
