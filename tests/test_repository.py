"""Checks on what the repository ships: compose file, generated stubs."""

import filecmp
import json
import subprocess
import tempfile
from pathlib import Path

import compose

from mxfed.config import PART_NAMES
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


def test_compose_mounts_secrets_only_where_they_are_used() -> None:
    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    services = json.loads(result.stdout)["services"]

    def mounts(name: str) -> dict[str, dict]:
        return {volume["target"]: volume for volume in services[name].get("volumes", [])}

    # The signing key: only in the parts that sign, never in the internet-facing gateway.
    for part in ("keys", "events", "sender", "backfill", "media"):
        assert mounts(part)["/signing"]["source"] == "signing"
    assert all(volume["source"] != "signing" for volume in mounts("gateway").values())
    # The internal plane: each part gets its own certificate directory, read-only; only the
    # init container (which makes them, and runs the operator's CLI) sees the CA key.
    for part in PART_NAMES:
        internal = [v for v in mounts(part).values() if v["source"] == "internal-tls"]
        assert [
            (v["target"], v["volume"].get("subpath"), v.get("read_only")) for v in internal
        ] == [(f"/internal/part-{part}", f"part-{part}", True)]
        assert services[part]["environment"].get("MXFED_INTERNAL_TLS", "true") != "false"
    assert mounts("init")["/internal"]["source"] == "internal-tls"


def test_committed_grpc_stubs_are_up_to_date() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        generated = generate(Path(scratch))
        stale = []
        for path in generated:
            committed = REPO_ROOT / path.relative_to(scratch)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(path.relative_to(scratch)))
        assert not stale, f"run `python -m mxfed.protogen`; stale stubs: {stale}"
