"""Checks on what the repository ships: compose file, generated stubs."""

import filecmp
import subprocess
import tempfile
from pathlib import Path

import compose

from mxfed.protogen import REPO_ROOT, generate


def test_compose_file_validates_with_the_real_compose_binary() -> None:
    # The package's wrapper script always exits 0; call the binary itself.
    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_file_scales_every_service() -> None:
    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    services = set(result.stdout.split())
    assert {"postgres", "keys", "events", "sender", "backfill", "media", "gateway"} <= services


def test_committed_grpc_stubs_are_up_to_date() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        generated = generate(Path(scratch))
        stale = []
        for path in generated:
            committed = REPO_ROOT / path.relative_to(scratch)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(path.relative_to(scratch)))
        assert not stale, f"run `python -m mxfed.protogen`; stale stubs: {stale}"
