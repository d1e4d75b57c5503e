"""mypy stays clean on the production packages (configured in pyproject.toml's [tool.mypy])."""

import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_mypy_reports_no_errors() -> None:
    # No paths on the command line: mypy checks the `packages` of [tool.mypy].
    # A fresh cache directory so a stale cache (or another checkout's) cannot hide errors.
    with tempfile.TemporaryDirectory() as cache_dir:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--config-file",
                str(REPO_ROOT / "pyproject.toml"),
                "--cache-dir",
                cache_dir,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert result.returncode == 0, f"mypy reported errors:\n{result.stdout}{result.stderr}"
