"""docs/api.md is generated from the protos' comments and kept current."""

from __future__ import annotations

from mxfed.apidoc import API_PAGE, generate

# RPCs and fields without a comment in protos/ when the page was introduced; this
# may only go down (document what you add: a `//` comment above the rpc or field).
UNDOCUMENTED_AT_MOST = 40


def test_api_reference_is_current() -> None:
    page, _ = generate()
    assert API_PAGE.read_text() == page, "docs/api.md is stale: run `python -m mxfed.apidoc`"


def test_every_rpc_is_listed_with_its_callers() -> None:
    page, missing = generate()
    assert "| `PerformSendEvent` |" in page
    assert "| `InputTransaction` |" in page and "`gateway`" in page
    assert len(missing) <= UNDOCUMENTED_AT_MOST, [m.what for m in missing]
