"""Generates the Python gRPC stubs in ``mxfed_api/`` from ``protos/``.

``python -m mxfed.protogen`` rewrites the committed stubs; a test regenerates
them into a temporary directory and fails when the committed ones are stale.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(output: Path) -> list[Path]:
    """Generate stubs for every proto into ``output``; return the files written."""
    files = [str(path.relative_to(PROTO_ROOT)) for path in proto_files()]
    if not files:
        return []
    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={output}",
            f"--grpc_python_out={output}",
            f"--pyi_out={output}",
            *files,
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    for directory in {p.parent for p in output.rglob("*_pb2.py")}:
        while directory != output:
            (directory / "__init__.py").touch()
            directory = directory.parent
    return sorted(p for p in output.rglob("*") if p.is_file())


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        written = generate(Path(scratch))
        target = REPO_ROOT / "mxfed_api"
        for path in written:
            relative = path.relative_to(scratch)
            destination = REPO_ROOT / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())
        print(f"generated {len(written)} files under {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
