"""The gRPC contracts pass ``buf lint`` and break nothing on the wire (``buf breaking``).

buf is the npm package ``@bufbuild/buf``: used from PATH when there, else
installed once into a cache directory. Without npm or its registry the tests
skip, unless ``MXFED_REQUIRE_BUF`` is set (``.ci/run`` sets it), where they fail.

The breaking check compares ``protos/`` with the newest release tag (``v*``);
until there is one, with the protos of the last commit that changed ``buf.yaml``
(a deliberate break before the first release is listed there, in its commit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxfed.protogen import REPO_ROOT

BUF_PACKAGE = "@bufbuild/buf@1.75.0"


def _unavailable(reason: str) -> None:
    if os.environ.get("MXFED_REQUIRE_BUF"):
        pytest.fail(f"buf is required (MXFED_REQUIRE_BUF) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def buf() -> str:
    found = shutil.which("buf")
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("neither buf nor npm is installed")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    prefix = cache / "mxfed" / BUF_PACKAGE.replace("/", "_")
    binary = prefix / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), BUF_PACKAGE],
                capture_output=True,
                text=True,
                timeout=240,
            )
        except subprocess.TimeoutExpired:
            _unavailable("npm install of buf timed out (registry unreachable?)")
        if result.returncode != 0 or not binary.exists():
            _unavailable(f"npm could not install {BUF_PACKAGE}: {result.stderr.strip()[-500:]}")
    return str(binary)


def _run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def _git(*args: str) -> str:
    result = _run("git", *args)
    if result.returncode != 0:
        pytest.skip(f"no git history here: {result.stderr.strip()}")
    return result.stdout.strip()


def baseline_ref() -> str:
    """The newest release tag, else the last commit that changed buf.yaml."""
    tag = _run("git", "describe", "--tags", "--abbrev=0", "--match", "v*")
    if tag.returncode == 0 and tag.stdout.strip():
        return tag.stdout.strip()
    changed = _git("log", "-1", "--format=%H", "--", "buf.yaml")
    if not changed:
        pytest.skip("buf.yaml is not committed yet: no baseline to compare with")
    return changed


@pytest.fixture
def baseline() -> Iterator[Path]:
    """``protos/`` as of :func:`baseline_ref`, beside today's buf.yaml, in a directory."""
    ref = baseline_ref()
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "protos.tar"
        _git("archive", "--output", str(archive), ref, "protos")
        root = Path(scratch) / "baseline"
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        shutil.copy(REPO_ROOT / "buf.yaml", root / "buf.yaml")
        yield root


def test_protos_pass_buf_lint(buf: str) -> None:
    result = _run(buf, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_break_nothing_on_the_wire(buf: str, baseline: Path) -> None:
    result = _run(buf, "breaking", ".", "--against", str(baseline))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_breaking_check_sees_a_renumbered_field(buf: str, baseline: Path) -> None:
    media = baseline / "protos" / "mxfed_api" / "media" / "v1" / "media.proto"
    text = media.read_text()
    assert "string mxc_uri = 1;" in text
    media.write_text(text.replace("string mxc_uri = 1;", "string mxc_uri = 99;"))
    result = _run(buf, "breaking", ".", "--against", str(baseline))
    assert result.returncode != 0
    assert "mxc_uri" in result.stdout
