"""The configuration: defaults, file and environment, every option checked at load."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mxfed.config import Config, ConfigError, env_name, load_config, sample_yaml

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_without_file_or_environment() -> None:
    config = load_config(environ={})
    assert config.server_name == "localhost:8448"
    assert config.run == ["keys", "events", "sender", "backfill", "media", "gateway"]
    assert config.signing_key == Path("data") / "signing.key"
    assert config.service_address("events") == config.events_listen
    assert "127.0.0.0/8" in config.federation_blocked_ip_ranges
    assert config.media_store == Path("data") / "media"
    assert config.media_max_bytes == 50 * 1024 * 1024


def test_file_then_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "mxfed.yaml"
    path.write_text("server_name: example.org\nlog_level: DEBUG\nrun: [keys]\n")
    config = load_config(
        path,
        environ={
            "MXFED_LOG_LEVEL": "WARNING",
            "DATABASE_URL": "postgresql://x/y",
            "MXFED_FEDERATION_ALLOWED_IP_RANGES": "127.0.0.1/32, ::1/128",
            "MXFED_FEDERATION_VERIFY_TLS": "false",
            "MXFED_RUN": "keys,events",
            "MXFED_TRUSTED_KEY_SERVERS": '[{"server_name": "matrix.org"}]',
        },
    )
    assert config.server_name == "example.org"
    assert config.log_level == "WARNING"
    assert config.run == ["keys", "events"]
    assert config.database_url == "postgresql://x/y"
    assert config.federation_allowed_ip_ranges == ["127.0.0.1/32", "::1/128"]
    assert config.federation_verify_tls is False
    assert [server.server_name for server in config.trusted_key_servers] == ["matrix.org"]


def test_building_a_config_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXFED_SERVER_NAME", "from.environment")
    assert Config().server_name == "localhost:8448"
    assert load_config(environ=None).server_name == "from.environment"


# One bad value per option: a new option must say how it is checked here.
BAD_VALUES: dict[str, str] = {
    "server_name": "not a server name",
    "data_dir": "{file}",
    "tls_certificate_path": "{directory}",
    "tls_private_key_path": "{directory}",
    "signing_key_path": "{directory}",
    "database_url": "mysql://db.example/mxfed",
    "database_password_file": "{missing}",
    "database_pool_size": "0",
    "database_start_timeout": "-1",
    "gateway_listen": "garbage",
    "keys_listen": "127.0.0.1:99999",
    "events_listen": "127.0.0.1",
    "sender_listen": "not a host:50053",
    "backfill_listen": "[::1:50054",
    "media_listen": "127.0.0.1:-1",
    "accounts_listen": "accounts",
    "gateway_metrics_listen": "localhost:port",
    "keys_metrics_listen": ":",
    "events_metrics_listen": "1.2.3.4.5:9102",
    "sender_metrics_listen": "::1:9103",
    "backfill_metrics_listen": "",
    "media_metrics_listen": "media:9105:1",
    "accounts_metrics_listen": "[fe80::1:9106",
    "keys_address": "http://keys:50051",
    "events_address": "dns:///events",
    "sender_address": "sender",
    "backfill_address": "ipv4:1.2.3.4",
    "media_address": "unix:",
    "accounts_address": "http://accounts:50056",
    "accounts_in_keys": "sometimes",
    "health_listen": "health",
    "listen_reuse_port": "maybe",
    "run": "keys,nonsense",
    "log_level": "LOUD",
    "log_format": "xml",
    "access_log_level": "VERBOSE",
    "well_known_server": "https://example.org/",
    "require_tls_client_certificate_match": "perhaps",
    "tls_client_ca_file": "{missing}",
    "federation_verify_tls": "sometimes",
    "federation_ca_file": "{directory}",
    "federation_client_certificate": "2",
    "federation_blocked_ip_ranges": "10.0.0.0/8,notacidr",
    "federation_allowed_ip_ranges": "127.0.0.1/8",
    "federation_request_timeout": "0",
    "federation_connect_timeout": "soon",
    "policy_server_timeout": "0",
    "trusted_key_servers": '[{"server_name": "matrix.org", "verify_keys": {"bad": "x"}}]',
    "key_valid_for_ms": "1000",
    "sender_min_retry_interval": "0",
    "sender_max_retry_interval": "-5",
    "sender_lease_seconds": "4",
    "instance_name": "has spaces",
    "sender_catch_up_max_pdus": "0",
    "sender_catch_up_events_per_room": "none",
    "media_store_path": "{file}",
    "media_max_bytes": "0",
    "media_remote_cache_max_bytes": "-1",
    "media_thumbnail_max_pixels": "lots",
    "media_remote_idle_timeout": "0",
    "media_downloads_per_origin": "0",
    "presence_enabled": "yes please",
    "identity_server_allow_http": "sometimes",
    "keys_max_cached_servers": "0",
    "keys_fetch_rate": "0",
    "keys_fetch_burst": "none",
    "internal_tls": "encrypted",
    "internal_tls_dir": "{file}",
    "internal_ca_certificate_path": "{directory}",
    "internal_ca_key_path": "{directory}",
    "internal_call_timeout": "0",
    "server_policy_refresh_interval": "0",
    "tracing_otlp_endpoint": "collector:4318",
    "tracing_sample_ratio": "2",
}


def test_every_option_has_a_bad_value_in_this_test() -> None:
    assert set(BAD_VALUES) == set(Config.model_fields)


def _bad_value(option: str, tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("x")
    return (
        BAD_VALUES[option]
        .replace("{file}", str(tmp_path / "a-file"))
        .replace("{directory}", str(tmp_path))
        .replace("{missing}", str(tmp_path / "missing"))
    )


@pytest.mark.parametrize("option", sorted(BAD_VALUES))
def test_a_bad_value_from_the_environment_is_refused_naming_the_option(
    option: str, tmp_path: Path
) -> None:
    variable = env_name(option)
    with pytest.raises(ConfigError) as refused:
        load_config(environ={variable: _bad_value(option, tmp_path)})
    message = str(refused.value)
    assert message.startswith(option), message
    assert f"(from {variable})" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "option", sorted(set(BAD_VALUES) - {"run", "trusted_key_servers"} - {"database_url"})
)
def test_a_bad_value_in_the_file_is_refused_naming_the_option(option: str, tmp_path: Path) -> None:
    path = tmp_path / "mxfed.yaml"
    value = _bad_value(option, tmp_path)
    if option.endswith("_ip_ranges"):
        path.write_text(yaml.safe_dump({option: value.split(",")}))
    else:
        path.write_text(f"{option}: {yaml.safe_dump(value).splitlines()[0]}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert str(refused.value).startswith(option), str(refused.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run: [nonsense]\n", "run"),
        ("no_such_option: 1\n", "no_such_option: not an option"),
        ("gateway_listn: 127.0.0.1:1\n", "did you mean gateway_listen?"),
        ("log_level: LOUD\n", "log_level"),
        ("- a list\n", "must hold a mapping"),
        ("server_name: [unclosed\n", "invalid YAML at line 2 column 1"),
        ("a: b\n  c: d\n", "invalid YAML at line 2 column 4"),
        ("sender_min_retry_interval: 100\nsender_max_retry_interval: 10\n", "must not exceed"),
    ],
)
def test_invalid_files_are_a_one_line_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "[::1]:50051",
        "keys.internal:50051",
        "dns:///keys:50051",
        "dns://8.8.8.8/keys.example:50051",
        "ipv4:10.0.0.1:50051,10.0.0.2:50051",
        "unix:/run/mxfed/keys.sock",
    ],
)
def test_service_addresses_take_grpc_targets(address: str) -> None:
    assert load_config(environ={"MXFED_KEYS_ADDRESS": address}).keys_address == address


def test_accounts_is_reached_at_the_keys_address_while_keys_serves_it() -> None:
    hosted = load_config(environ={"MXFED_KEYS_ADDRESS": "dns:///keys:50051"})
    assert hosted.service_address("accounts") == "dns:///keys:50051"
    assert hosted.host_part("accounts") == "keys" and hosted.hosted_services("keys") == ["accounts"]
    assert "accounts" not in hosted.run
    apart = load_config(environ={"MXFED_ACCOUNTS_IN_KEYS": "false"})
    assert apart.service_address("accounts") == apart.accounts_listen == "127.0.0.1:50056"
    assert apart.host_part("accounts") == "accounts" and apart.hosted_services("keys") == []
    assert apart.run == ["keys", "events", "sender", "backfill", "media", "accounts", "gateway"]
    # Naming accounts in run while keys serves it is a mistake said at load time.
    with pytest.raises(ConfigError, match="accounts_in_keys"):
        load_config(environ={"MXFED_RUN": "keys,accounts"})


def test_embedded_database_is_a_valid_choice() -> None:
    assert load_config(environ={"DATABASE_URL": "embedded"}).database_url == "embedded"


def test_the_sample_documents_every_option_and_loads_to_the_defaults(tmp_path: Path) -> None:
    sample = sample_yaml()
    for option, field in Config.model_fields.items():
        assert field.description, f"{option} has no docstring"
        assert re.search(rf"^{option}:", sample, re.MULTILINE), option
        assert f"# env: {env_name(option)}" in sample
    path = tmp_path / "sample.yaml"
    path.write_text(sample)
    assert load_config(path, environ={}).model_dump() == Config().model_dump()


def _readme_options() -> set[str]:
    text = README.read_text()
    table = text.split("| option | default | meaning |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`([a-z_]+)`", first_cell))
    return names


def test_the_readme_option_table_lists_exactly_the_options() -> None:
    assert _readme_options() == set(Config.model_fields)


def _mxfed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxfed.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_config_check_and_options_after_the_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("server_name: example.org\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway_listen: garbage\n")

    ok = _mxfed("config", "check", "--config", str(good), env={"MXFED_NOT_AN_OPTION": "1"})
    assert ok.returncode == 0, ok.stderr
    assert "configuration ok" in ok.stdout and "server_name example.org" in ok.stdout
    assert "ignored: MXFED_NOT_AN_OPTION" in ok.stdout

    before = _mxfed("--config", str(bad), "config", "check")
    after = _mxfed("config", "check", "--config", str(bad))
    for refused in (before, after):
        assert refused.returncode == 78
        assert refused.stderr == (
            "mxfed: configuration error: gateway_listen: 'garbage' is not host:port"
            " (e.g. 127.0.0.1:8448 or [::1]:8448)\n"
        )

    # Any command refuses a bad configuration the same way, the option after it too.
    run = _mxfed("run", "--config", str(bad))
    assert run.returncode == 78 and run.stderr.startswith("mxfed: configuration error: gateway")


def test_config_sample_prints_the_sample() -> None:
    printed = _mxfed("config", "sample")
    assert printed.returncode == 0
    assert printed.stdout == sample_yaml()
