"""The dependencies in pyproject.toml are the ones the code imports, in the right extra.

Runtime code (what the image ships) may import only runtime dependencies; a
module that needs an extra says so below. Tests and benchmarks may import the
test extra too. And no runtime dependency goes unused.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

from mxfed.protogen import REPO_ROOT

RUNTIME_PACKAGES = ("matrix_protocol", "mxfed", "gateway", "services", "mxfed_api")
OUR_PACKAGES = {*RUNTIME_PACKAGES, "tests", "bench", "synapse_harness", "partition"}

# Runtime modules that use an optional extra (each imports it where it is needed).
MODULE_EXTRAS = {
    "mxfed/database.py": "embedded",  # pgserver, for `mxfed run` without a PostgreSQL
    "mxfed/protogen.py": "dev",  # grpc_tools, for regenerating the stubs
    "mxfed/apidoc.py": "dev",  # grpc_tools, for regenerating docs/api.md
}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    groups = {"runtime": {_name(r) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        groups[extra] = {_name(r) for r in requirements}
    return groups


def _imports(paths: Iterable[Path]) -> dict[str, set[Path]]:
    """Top-level third-party modules imported by ``paths`` → the files importing them."""
    found: dict[str, set[Path]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OUR_PACKAGES or top == "__future__":
                    continue
                found.setdefault(top, set()).add(path.relative_to(REPO_ROOT))
    return found


@functools.cache
def _owners() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _distributions(module: str) -> set[str]:
    owners = _owners().get(module, [])
    return {_name(owner) for owner in owners}


def _python_files(*roots: str) -> list[Path]:
    return [path for root in roots for path in sorted((REPO_ROOT / root).rglob("*.py"))]


def test_runtime_code_imports_only_runtime_dependencies() -> None:
    declared = _declared()
    problems = []
    for module, files in sorted(_imports(_python_files(*RUNTIME_PACKAGES)).items()):
        owners = _distributions(module)
        assert owners, f"{module} (imported by {sorted(map(str, files))}) is not installed"
        for path in files:
            allowed = declared["runtime"] | declared.get(
                MODULE_EXTRAS.get(path.as_posix(), ""), set()
            )
            if not owners & allowed:
                problems.append(f"{path} imports {module} ({', '.join(sorted(owners))})")
    assert not problems, "not runtime dependencies:\n" + "\n".join(problems)


def test_every_runtime_dependency_is_imported_by_runtime_code() -> None:
    declared = _declared()["runtime"]
    imported = {
        owner
        for module in _imports(_python_files(*RUNTIME_PACKAGES))
        for owner in _distributions(module)
    }
    assert declared - imported == set()


def test_tests_and_benchmarks_import_only_declared_dependencies() -> None:
    declared = _declared()
    allowed = declared["runtime"] | declared["test"]
    problems = [
        f"{module} ({', '.join(sorted(_distributions(module)))}) in {sorted(map(str, files))[0]}"
        for module, files in sorted(_imports(_python_files("tests", "bench")).items())
        if not _distributions(module) & allowed
    ]
    assert not problems, "not in the runtime or test extras:\n" + "\n".join(problems)
