from pathlib import Path

import pytest

from mxfed.config import ConfigError, load_config


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
        },
    )
    assert config.server_name == "example.org"
    assert config.log_level == "WARNING"
    assert config.run == ["keys"]
    assert config.database_url == "postgresql://x/y"
    assert config.federation_allowed_ip_ranges == ["127.0.0.1/32", "::1/128"]
    assert config.federation_verify_tls is False


@pytest.mark.parametrize(
    "text",
    ["run: [nonsense]\n", "no_such_option: 1\n", "log_level: LOUD\n", "- a list\n"],
)
def test_invalid_configuration_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})
