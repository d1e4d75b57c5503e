"""Checks on what the repository ships: compose file, generated stubs, self-contained text."""

import filecmp
import json
import re
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

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
    assert {
        "postgres",
        "keys",
        "events",
        "sender",
        "backfill",
        "media",
        "accounts",
        "gateway",
    } <= services


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
    for part in ("keys", "events", "sender", "backfill", "media", "accounts"):
        assert mounts(part)["/signing"]["source"] == "signing"
        # Only the keys service writes it (rotation).
        assert mounts(part)["/signing"].get("read_only", False) == (part != "keys"), part
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
    # The federation TLS pair: only where TLS is served (the gateway and the proxy).
    holders = {name for name in services if "/federation-tls" in mounts(name)}
    assert holders == {"gateway", "federation", "init"}


def _compose_json() -> dict:
    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_compose_database_password_is_a_secret_given_only_to_database_users() -> None:
    project = _compose_json()
    services = project["services"]
    assert project["secrets"]["postgres_password"]["file"].endswith("/secrets/postgres-password")
    users = {name for name, service in services.items() if service.get("secrets")}
    assert users == {"postgres", "keys", "events", "sender", "backfill", "media", "accounts"}
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert "PASSWORD=" not in f"{key}={value}", (name, key)
            if key == "DATABASE_URL":
                assert urlsplit(value).password is None, (name, value)
    for name in users - {"postgres"}:
        environment = services[name]["environment"]
        assert environment["MXFED_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_password"
    )


def test_compose_scales_gateways_behind_one_published_port() -> None:
    services = _compose_json()["services"]
    published = {
        name: [port["published"] for port in service.get("ports", [])]
        for name, service in services.items()
        if service.get("ports")
    }
    # Only the proxy publishes a port, so `--scale gateway=N` never collides on 8448.
    assert published == {"federation": ["8448"]}
    proxy = services["federation"]
    assert proxy["environment"]["GATEWAY_HOST"] == "gateway"
    config_mount = next(v for v in proxy["volumes"] if v["target"].endswith("haproxy.cfg"))
    assert Path(config_mount["source"]) == REPO_ROOT / "deploy" / "compose" / "haproxy.cfg"
    haproxy = (REPO_ROOT / "deploy" / "compose" / "haproxy.cfg").read_text()
    # Each origin to one replica: the per-origin limits live in each gateway's memory.
    assert "balance hdr(X-Mxfed-Origin)" in haproxy
    assert "server-template gateway 16" in haproxy


def test_compose_healthchecks_are_cheap_for_every_part() -> None:
    services = _compose_json()["services"]
    for part in PART_NAMES:
        test = services[part]["healthcheck"]["test"]
        # A small binary per probe, never a Python start.
        assert test[0] == "CMD" and test[1] in ("grpc_health_probe", "curl"), (part, test)
        assert not any("python" in word or word == "mxfed" for word in test), (part, test)
    for part in ("keys", "events", "sender", "backfill", "media", "accounts"):
        environment = services[part]["environment"]
        assert (
            f"-addr={environment['MXFED_HEALTH_LISTEN']}" in services[part]["healthcheck"]["test"]
        )


def test_committed_grpc_stubs_are_up_to_date() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        generated = generate(Path(scratch))
        stale = []
        for path in generated:
            committed = REPO_ROOT / path.relative_to(scratch)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(path.relative_to(scratch)))
        assert not stale, f"run `python -m mxfed.protogen`; stale stubs: {stale}"


# Text the repository ships: code, tests, protos, migrations, docs, deployment files.
_TEXT_SUFFIXES = {".py", ".pyi", ".md", ".proto", ".sql", ".yml", ".yaml", ".toml", ".sh", ".json"}
_SKIPPED_DIRS = {".git", ".venv", "mxfed_api", "mxfed.egg-info", "node_modules", "__pycache__"}
_URL = re.compile(r"https?://\S+")
_MARKDOWN_NAME = re.compile(r"[\w./-]*\w\.md\b")
# A numbered section sign cites a document by its numbering; only RFCs are cited that way.
_SECTION = re.compile(r"(RFC \d+ )?§\s*\d")
# (Character classes keep these patterns from matching themselves.)
_OUTSIDE = re.compile(r"\.\./share[d]|/wor[k]/|shared/spe[c]|\bdesig[n]\.md\b")


def _shipped_text_files() -> list[Path]:
    found = []
    for path in REPO_ROOT.rglob("*"):
        parts = path.relative_to(REPO_ROOT).parts
        # Caches and tool directories (.venv, .mypy_cache...) are not shipped; .ci is.
        if any(p in _SKIPPED_DIRS or (p.startswith(".") and p != ".ci") for p in parts[:-1]):
            continue
        if path.is_file() and (path.suffix in _TEXT_SUFFIXES or path.name in {"Dockerfile", "run"}):
            found.append(path)
    return found


def test_nothing_cites_a_document_outside_the_repository() -> None:
    """The repository stands on its own: cite the published spec (a URL), not a file elsewhere."""
    files = _shipped_text_files()
    assert REPO_ROOT / "tests" / "test_repository.py" in files
    markdown = {p.relative_to(REPO_ROOT).as_posix() for p in files if p.suffix == ".md"}
    names = markdown | {name.rsplit("/", 1)[-1] for name in markdown}
    problems = []
    for path in files:
        where = path.relative_to(REPO_ROOT)
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            text = _URL.sub("", line)
            if _OUTSIDE.search(text):
                problems.append(f"{where}:{number}: a path outside the repository: {line.strip()}")
            if any(match.group(1) is None for match in _SECTION.finditer(text)):
                problems.append(f"{where}:{number}: a numbered section: {line.strip()}")
            for name in _MARKDOWN_NAME.findall(text):
                if name.lstrip("./") not in names:
                    problems.append(f"{where}:{number}: {name} is not in the repository")
    assert not problems, "\n".join(problems)


def test_every_compose_environment_passes_the_config_checks(tmp_path: Path) -> None:
    """What each container is given loads (paths pointed at files that exist here)."""
    from mxfed.config import load_config

    (tmp_path / "password").write_text("secret\n")
    services = _compose_json()["services"]
    for name in (*PART_NAMES, "init"):
        environment = dict(services[name]["environment"])
        for option, value in environment.items():
            if option.endswith(("_DIR", "_PATH")) and value.startswith("/"):
                environment[option] = str(tmp_path / value.strip("/").replace("/", "-"))
        if "MXFED_DATABASE_PASSWORD_FILE" in environment:
            environment["MXFED_DATABASE_PASSWORD_FILE"] = str(tmp_path / "password")
        config = load_config(None, environ=environment)
        assert config.health_listen == "127.0.0.1:8081", name
        assert config.service_address("events") == "dns:///events:50052", name
