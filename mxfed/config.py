"""One typed configuration for every mxfed process.

Values come from, in increasing priority: the defaults below, a YAML file
(``--config`` or ``MXFED_CONFIG``), and environment variables
``MXFED_<OPTION>`` (upper case; lists comma-separated). ``DATABASE_URL`` is
also honoured for ``database_url``. Every option is documented in README.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

SERVICE_NAMES = ("keys", "events", "sender", "backfill", "media")
PART_NAMES = (*SERVICE_NAMES, "gateway")

DEFAULT_BLOCKED_IP_RANGES = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "0.0.0.0/8",
    "255.255.255.255/32",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
    "::/128",
]


class ConfigError(ValueError):
    pass


class TrustedKeyServer(BaseModel):
    """A notary we ask for other servers' keys, with its pinned verify keys."""

    server_name: str
    verify_keys: dict[str, str] = Field(default_factory=dict)


class Config(BaseModel):
    model_config = {"extra": "forbid"}

    server_name: str = "localhost:8448"
    data_dir: Path = Path("data")

    tls_certificate_path: Path | None = None
    tls_private_key_path: Path | None = None
    signing_key_path: Path | None = None

    database_url: str | None = None
    database_pool_size: int = 10

    gateway_listen: str = "127.0.0.1:8448"
    gateway_metrics_listen: str = "127.0.0.1:9100"
    keys_listen: str = "127.0.0.1:50051"
    events_listen: str = "127.0.0.1:50052"
    sender_listen: str = "127.0.0.1:50053"
    backfill_listen: str = "127.0.0.1:50054"
    media_listen: str = "127.0.0.1:50055"
    keys_metrics_listen: str = "127.0.0.1:9101"
    events_metrics_listen: str = "127.0.0.1:9102"
    sender_metrics_listen: str = "127.0.0.1:9103"
    backfill_metrics_listen: str = "127.0.0.1:9104"
    media_metrics_listen: str = "127.0.0.1:9105"
    # Where other processes reach each service; defaults to its listen address.
    keys_address: str | None = None
    events_address: str | None = None
    sender_address: str | None = None
    backfill_address: str | None = None
    media_address: str | None = None

    # SO_REUSEPORT on every listening socket: processes of one host may share a
    # port. Off, a port in use is a start-up error.
    listen_reuse_port: bool = False

    run: list[str] = Field(default_factory=lambda: list(PART_NAMES))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    well_known_server: str | None = None
    require_tls_client_certificate_match: bool = False
    tls_client_ca_file: Path | None = None

    federation_verify_tls: bool = True
    federation_ca_file: Path | None = None
    federation_client_certificate: bool = False
    federation_blocked_ip_ranges: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED_IP_RANGES)
    )
    federation_allowed_ip_ranges: list[str] = Field(default_factory=list)
    federation_request_timeout: float = 60.0
    federation_connect_timeout: float = 10.0

    trusted_key_servers: list[TrustedKeyServer] = Field(default_factory=list)
    key_valid_for_ms: int = 24 * 3600 * 1000

    sender_min_retry_interval: float = 10.0
    sender_max_retry_interval: float = 3600.0
    # A sender replica's hold on a destination lasts this long unless renewed
    # (every 3 s heartbeat); a dead replica's destinations move after it.
    sender_lease_seconds: float = Field(default=12.0, ge=6.0)
    # Catch-up after a long outage: past this many unsent PDUs (or an hour of
    # backoff) a destination keeps only the newest events per room.
    sender_catch_up_max_pdus: int = Field(default=500, ge=1)
    sender_catch_up_events_per_room: int = Field(default=10, ge=1)

    # Media (services/media/): content-addressed files under media_store_path
    # (default <data_dir>/media; replicas on several machines share it),
    # metadata in PostgreSQL.
    media_store_path: Path | None = None
    # The largest upload we accept and remote file we fetch (Synapse's default).
    media_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    # Cached remote media beyond this is evicted, least recently used first.
    media_remote_cache_max_bytes: int = Field(default=10 * 1024**3, ge=0)
    # Images with more pixels (per frame) are not decoded: decompression bombs.
    media_thumbnail_max_pixels: int = Field(default=32_000_000, ge=1)
    # A remote that sends no byte of a download for this long has failed it.
    media_remote_idle_timeout: float = Field(default=30.0, gt=0)
    # Concurrent federation media downloads per requesting server (gateway; 429 beyond).
    media_downloads_per_origin: int = Field(default=8, ge=1)

    # Presence (edus.md §3, optional in the spec): we send none; while this
    # is off, m.presence EDUs received are ignored too.
    presence_enabled: bool = False

    @field_validator("run")
    @classmethod
    def _known_parts(cls, parts: list[str]) -> list[str]:
        unknown = set(parts) - set(PART_NAMES)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PART_NAMES)}")
        return parts

    # Derived paths --------------------------------------------------------------

    @property
    def tls_certificate(self) -> Path:
        return self.tls_certificate_path or self.data_dir / "tls.crt"

    @property
    def tls_private_key(self) -> Path:
        return self.tls_private_key_path or self.data_dir / "tls.key"

    @property
    def signing_key(self) -> Path:
        return self.signing_key_path or self.data_dir / "signing.key"

    @property
    def media_store(self) -> Path:
        return self.media_store_path or self.data_dir / "media"

    def listen_address(self, part: str) -> str:
        return str(getattr(self, f"{part}_listen"))

    def metrics_address(self, part: str) -> str:
        return str(getattr(self, f"{part}_metrics_listen"))

    def service_address(self, service: str) -> str:
        return getattr(self, f"{service}_address") or self.listen_address(service)


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if environ.get("DATABASE_URL"):
        overrides["database_url"] = environ["DATABASE_URL"]
    for name, field in Config.model_fields.items():
        raw = environ.get(f"MXFED_{name.upper()}")
        if raw is None:
            continue
        if name == "trusted_key_servers":
            overrides[name] = yaml.safe_load(raw) or []
        elif "list" in str(field.annotation):
            overrides[name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            overrides[name] = raw
    return overrides


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the YAML file (if any) and apply environment overrides."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("MXFED_CONFIG")
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        values.update(loaded)
    values.update(_env_overrides(environ))
    try:
        return Config(**values)
    except ValidationError as exc:
        raise ConfigError(str(exc)) from exc
