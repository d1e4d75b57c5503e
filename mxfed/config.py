"""One typed configuration for every mxfed process: the one definition of the options.

Values come from, in increasing priority: the defaults below, a YAML file
(``--config`` or ``MXFED_CONFIG``), and environment variables
``MXFED_<OPTION>`` (upper case; lists comma-separated, ``trusted_key_servers``
as JSON or YAML), read by pydantic-settings. ``DATABASE_URL`` also sets
``database_url``. Every option is checked when the configuration is loaded
(addresses, CIDRs, URLs, server names, paths, ranges); a bad value is a
:class:`ConfigError` naming the option and where the value came from.

The docstring under each option is its documentation: ``mxfed config
sample`` prints them, and a test checks the README's option table against
this class.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from matrix_protocol.server_names import parse_server_name
from mxfed.blocked_ranges import DEFAULT_BLOCKED_IP_RANGES

SERVICE_NAMES = ("keys", "events", "sender", "backfill", "media", "accounts")
PART_NAMES = (*SERVICE_NAMES, "gateway")
ENV_PREFIX = "MXFED_"


# ``database_url`` value that always picks the embedded PostgreSQL (pgserver).
EMBEDDED_DATABASE = "embedded"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the option(s)."""


# Value checks -------------------------------------------------------------------

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\.?")
_NUMERIC = re.compile(r"[0-9.]+")  # looks like an IPv4 address, so must be one
_KEY_ID = re.compile(r"ed25519:[A-Za-z0-9_]+")
# gRPC name-resolution schemes a service address may use (https://grpc.github.io/grpc/core/md_doc_naming.html).
_GRPC_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock")


def _host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the host may be empty (every address)."""
    host, colon, port_text = value.rpartition(":")
    if not colon or not port_text.isdigit():
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8448 or [::1]:8448)")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{value!r}: port {port} is above 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    elif host and not _is_ip(host) and (_NUMERIC.fullmatch(host) or not _HOSTNAME.fullmatch(host)):
        raise ValueError(f"{value!r}: {host!r} is neither an IP address nor a host name")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return ":" not in host  # IPv6 must be bracketed in host:port


def _listen_address(value: str) -> str:
    _host_port(value)
    return value


def _service_address(value: str) -> str:
    """A gRPC target: ``host:port`` or ``scheme:...`` with a scheme gRPC resolves."""
    scheme, colon, rest = value.partition(":")
    if colon and scheme in _GRPC_SCHEMES:
        if scheme in ("unix", "unix-abstract", "vsock"):
            if not rest:
                raise ValueError(f"{value!r}: nothing after {scheme}:")
            return value
        target = rest
        if scheme == "dns" and rest.startswith("//"):
            target = rest[2:].partition("/")[2]  # dns://[authority]/host:port
        for address in target.split(","):
            _host_port(address if scheme != "ipv6" or address.startswith("[") else address)
        return value
    if "://" in value:
        raise ValueError(
            f"{value!r}: unknown scheme; use host:port or one of "
            + ", ".join(f"{s}:" for s in _GRPC_SCHEMES)
        )
    _host_port(value)
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP range in CIDR form ({exc})") from None
        raise ValueError(f"{value!r} has host bits set; did you mean {network}?") from None
    return value


def _server_name(value: str) -> str:
    parse_server_name(value)
    return value


def _database_url(value: str) -> str:
    if value == EMBEDDED_DATABASE:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            "must be a postgresql://user@host:port/database URL, or 'embedded' for the "
            "embedded PostgreSQL in the data directory"
        )
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"bad port in the URL ({exc})") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("the URL names no host")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


def _not_a_directory(path: Path) -> Path:
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory, not a file")
    return path


def _directory(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a directory")
    return path


def _comma_list(value: Any) -> Any:
    """Environment variables carry lists comma-separated."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _yaml_value(value: Any) -> Any:
    """Structured options from the environment, as JSON or YAML."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid JSON or YAML: {_yaml_problem(exc)}") from None
    return value


ListenAddress = Annotated[str, AfterValidator(_listen_address)]
ServiceAddress = Annotated[str, AfterValidator(_service_address)]
Cidr = Annotated[str, AfterValidator(_cidr)]
CidrList = Annotated[list[Cidr], NoDecode, BeforeValidator(_comma_list)]
ServerName = Annotated[str, AfterValidator(_server_name)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
HttpUrlText = Annotated[str, AfterValidator(_http_url)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
FilePath = Annotated[Path, AfterValidator(_not_a_directory)]
Directory = Annotated[Path, AfterValidator(_directory)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class TrustedKeyServer(BaseModel):
    """A notary we ask for other servers' keys, with its pinned verify keys."""

    model_config = {"extra": "forbid"}

    server_name: ServerName
    verify_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("verify_keys")
    @classmethod
    def _verify_keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"key id {key_id!r} is not ed25519:<version>")
            try:
                raw = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"key {key_id}: not an unpadded base64 ed25519 public key")
        return keys


# The options ---------------------------------------------------------------------


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        populate_by_name=True,
    )

    server_name: ServerName = "localhost:8448"
    """This server's name in user ids, signatures and X-Matrix (host[:port])."""

    data_dir: Directory = Path("data")
    """Where generated files (keys, TLS pair) and the embedded database live."""

    tls_certificate_path: FilePath | None = None
    """The gateway's TLS certificate (PEM; default <data_dir>/tls.crt, self-signed on first run
    when absent)."""

    tls_private_key_path: FilePath | None = None
    """The gateway's TLS private key (PEM; default <data_dir>/tls.key)."""

    signing_key_path: FilePath | None = None
    """The ed25519 signing key ('ed25519 <version> <base64 seed>'; default
    <data_dir>/signing.key, generated on first run, mode 0600 from its first byte); its key
    id changes only by `mxfed keys rotate`; read only by the parts that sign."""

    database_url: DatabaseUrl | None = Field(
        default=None,
        validation_alias=AliasChoices("database_url", "DATABASE_URL"),
    )
    """PostgreSQL URL (also DATABASE_URL); 'embedded' for the embedded PostgreSQL in
    <data_dir>/postgres; unset: 127.0.0.1:5432 (database mxfed) if it answers, else embedded."""

    database_password_file: ExistingFile | None = None
    """A file holding the database password (a compose or Kubernetes secret), used instead
    of a password in database_url."""

    database_pool_size: int = Field(default=10, ge=1)
    """Database connections per service process."""

    database_start_timeout: float = Field(default=20.0, gt=0)
    """Seconds a starting part waits for PostgreSQL to answer before it stops with an error."""

    gateway_listen: ListenAddress = "127.0.0.1:8448"
    """Federation API (HTTPS) listen address."""

    keys_listen: ListenAddress = "127.0.0.1:50051"
    """The keys service's gRPC listen address."""

    events_listen: ListenAddress = "127.0.0.1:50052"
    """The events service's gRPC listen address."""

    sender_listen: ListenAddress = "127.0.0.1:50053"
    """The sender service's gRPC listen address."""

    backfill_listen: ListenAddress = "127.0.0.1:50054"
    """The backfill service's gRPC listen address."""

    media_listen: ListenAddress = "127.0.0.1:50055"
    """The media service's gRPC listen address."""

    accounts_listen: ListenAddress = "127.0.0.1:50056"
    """The accounts service's gRPC listen address, when it runs as its own process
    (accounts_in_keys off)."""

    gateway_metrics_listen: ListenAddress = "127.0.0.1:9100"
    """The gateway's Prometheus metrics (plain HTTP)."""

    keys_metrics_listen: ListenAddress = "127.0.0.1:9101"
    """The keys service's Prometheus metrics."""

    events_metrics_listen: ListenAddress = "127.0.0.1:9102"
    """The events service's Prometheus metrics."""

    sender_metrics_listen: ListenAddress = "127.0.0.1:9103"
    """The sender service's Prometheus metrics."""

    backfill_metrics_listen: ListenAddress = "127.0.0.1:9104"
    """The backfill service's Prometheus metrics."""

    media_metrics_listen: ListenAddress = "127.0.0.1:9105"
    """The media service's Prometheus metrics."""

    accounts_metrics_listen: ListenAddress = "127.0.0.1:9106"
    """The accounts service's Prometheus metrics, when it runs as its own process."""

    health_listen: ListenAddress | None = None
    """A plaintext gRPC port that serves only the standard health protocol of a process
    running one service (`mxfed run --service NAME`), for probes that cannot do mutual TLS:
    Kubernetes gRPC probes, grpc_health_probe in compose. Unset: no such port."""

    keys_address: ServiceAddress | None = None
    """Where other processes reach the keys service (a gRPC target such as host:port or
    dns:///keys:50051; default: its listen address)."""

    events_address: ServiceAddress | None = None
    """Where other processes reach the events service (default: its listen address)."""

    sender_address: ServiceAddress | None = None
    """Where other processes reach the sender service (default: its listen address)."""

    backfill_address: ServiceAddress | None = None
    """Where other processes reach the backfill service (default: its listen address)."""

    media_address: ServiceAddress | None = None
    """Where other processes reach the media service (default: its listen address)."""

    accounts_address: ServiceAddress | None = None
    """Where other processes reach the accounts service (default: the keys address while
    accounts_in_keys is on, else the accounts listen address)."""

    accounts_in_keys: bool = True
    """The keys process also serves the accounts service (profiles, devices, E2E keys,
    to-device, presence), saving a process (~75 MB) on a small server; `mxfed run` then
    starts no accounts process. Off: accounts runs as its own part (`mxfed run --service
    accounts`), scaled apart from keys, as the compose file and Kubernetes manifests run it."""

    listen_reuse_port: bool = False
    """Bind every listening socket with SO_REUSEPORT so processes of one host can share a
    port; off, a port already in use stops the part at start."""

    run: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: [part for part in PART_NAMES if part != "accounts"]
    )
    """Which parts `mxfed run` starts. The default has accounts only when accounts_in_keys
    is off (it is added then); naming accounts while accounts_in_keys is on is an error."""

    log_level: LogLevel = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""

    log_format: Literal["json", "text"] = "json"
    """json (one object per record) or text (key=value)."""

    access_log_level: LogLevel | Literal["OFF"] = "INFO"
    """The level of the gateway's federation access log records (one per request: origin,
    method, route, status, duration, bytes); OFF for none."""

    well_known_server: ServerName | None = None
    """Serve /.well-known/matrix/server delegating to this host[:port]."""

    require_tls_client_certificate_match: bool = False
    """Require a TLS client certificate naming the X-Matrix origin on every signed request
    (the gateway then asks for client certificates)."""

    tls_client_ca_file: ExistingFile | None = None
    """CAs that client certificates are verified against (default: the system's)."""

    federation_verify_tls: bool = True
    """Verify remote servers' TLS certificates (turn off only for self-signed test peers)."""

    federation_ca_file: ExistingFile | None = None
    """An extra CA bundle for outbound federation."""

    federation_client_certificate: bool = False
    """Present our TLS certificate as a client certificate on outbound requests."""

    federation_blocked_ip_ranges: CidrList = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED_IP_RANGES)
    )
    """Addresses no outbound request (federation, key fetches, identity servers) connects to
    (default: private, loopback, link-local, CGNAT, multicast, documentation and reserved
    ranges; one list, mxfed/blocked_ranges.py)."""

    federation_allowed_ip_ranges: CidrList = Field(default_factory=list)
    """Exceptions to the block list (e.g. 127.0.0.0/8 for a Synapse on this machine)."""

    identity_server_allow_http: bool = False
    """Identity servers (third-party invites) are reached through the federation client's
    connector (block list, no redirects), over https only unless this allows http."""

    federation_request_timeout: float = Field(default=60.0, gt=0)
    """Seconds an outbound federation request may take."""

    federation_connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds an outbound connection may take to open."""

    policy_server_timeout: float = Field(default=10.0, gt=0)
    """Seconds a room's policy server may take to sign an event (``POST /_matrix/policy/v1/sign``);
    past it the policy server counts as unavailable (README: policy servers)."""

    trusted_key_servers: Annotated[
        list[TrustedKeyServer], NoDecode, BeforeValidator(_yaml_value)
    ] = Field(default_factory=list)
    """Notaries: [{server_name, verify_keys: {key_id: base64}}]."""

    key_valid_for_ms: int = Field(default=24 * 3600 * 1000, ge=60_000)
    """The valid_until_ts we publish for our keys is now + this (milliseconds)."""

    keys_max_cached_servers: int = Field(default=10_000, ge=1)
    """Servers whose keys and fetch state a keys replica keeps in memory (least recently
    used dropped first; the database keeps every key): remote input chooses the names."""

    keys_fetch_rate: float = Field(default=10.0, gt=0)
    """Fetches per second, per keys replica, of the keys of servers it knows nothing of;
    requests claiming unknown origins beyond this fail like an unreachable server."""

    keys_fetch_burst: int = Field(default=50, ge=1)
    """How many such fetches may go at once before keys_fetch_rate applies."""

    sender_min_retry_interval: float = Field(default=10.0, gt=0)
    """Seconds before the first retry of an unreachable destination."""

    sender_max_retry_interval: float = Field(default=3600.0, gt=0)
    """The longest backoff for an unreachable destination, in seconds."""

    sender_lease_seconds: float = Field(default=12.0, ge=6.0)
    """How long a sender replica's hold on a destination lasts unless renewed (every 3 s);
    a dead replica's destinations move to another after this (at least 6)."""

    instance_name: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9._:/@-]*$")
    """This replica's name, stable across its restarts (the host or pod name; empty: the
    host name and the part's gRPC port). A sender replica restarting under the same name
    takes its destinations back at once instead of after ``sender_lease_seconds``; give
    each replica of a part its own name."""

    sender_catch_up_max_pdus: int = Field(default=500, ge=1)
    """Catch-up after a long outage: past this many unsent PDUs (or an hour of backoff) a
    destination keeps only the newest events of each room."""

    sender_catch_up_events_per_room: int = Field(default=10, ge=1)
    """How many newest unsent events per room such a destination keeps."""

    media_store_path: Directory | None = None
    """The content-addressed media store (default <data_dir>/media; every media replica
    shares it, so replicas on several machines need it on shared storage)."""

    media_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    """The largest upload we accept and remote media we fetch, in bytes (Synapse's
    default)."""

    media_remote_cache_max_bytes: int = Field(default=10 * 1024**3, ge=0)
    """Cached remote media and thumbnails beyond this many bytes are evicted, least
    recently used first."""

    media_thumbnail_max_pixels: int = Field(default=32_000_000, ge=1)
    """Images with more pixels (per frame) are not decoded: decompression bombs."""

    media_remote_idle_timeout: float = Field(default=30.0, gt=0)
    """A remote that sends no byte of a media download for this many seconds has failed
    it."""

    media_downloads_per_origin: int = Field(default=8, ge=1)
    """Concurrent federation media downloads per requesting server (the gateway answers
    429 beyond)."""

    presence_enabled: bool = False
    """Presence: we never send m.presence; when true, received m.presence EDUs are kept
    (Accounts.QueryPresence), when false they are ignored."""

    internal_tls: bool = True
    """Mutual TLS and per-RPC authorization on every internal gRPC connection (the internal
    plane); false makes it plaintext and unauthenticated, for development only, and every
    process logs a warning saying so."""

    internal_tls_dir: Directory | None = None
    """The internal CA and one directory per identity: part-<name>/, operator/,
    actor-<name>/, each with tls.crt, tls.key and ca.crt (default <data_dir>/internal)."""

    internal_ca_certificate_path: FilePath | None = None
    """The CA that issues the internal certificates (default <internal_tls_dir>/ca.crt,
    made on first run when absent; or the operator's own CA)."""

    internal_ca_key_path: FilePath | None = None
    """The internal CA's private key (default <internal_tls_dir>/ca.key); needed only where
    certificates are issued (first run, mxfed init, mxfed actors add)."""

    internal_call_timeout: float = Field(default=60.0, gt=0)
    """Seconds an internal unary gRPC call may take when it sets no deadline itself."""

    tracing_otlp_endpoint: HttpUrlText | None = None
    """OpenTelemetry tracing: the OTLP/HTTP traces URL spans are exported to
    (``http://collector:4318/v1/traces``); unset, tracing is off and costs nothing."""

    tracing_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """The share of traces kept, decided where a trace starts (the gateway, or a part for a
    local actor's call); the parts follow that decision."""

    server_policy_refresh_interval: float = Field(default=2.0, gt=0, le=60)
    """Seconds between checks for a changed server block list or blocked rooms (mxfed servers
    block, mxfed room block): each part and replica applies a change within this time."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Constructing a Config reads nothing by itself (tests build them
        # directly); load_config() merges the file and the environment.
        return (init_settings,)

    @field_validator("run")
    @classmethod
    def _known_parts(cls, parts: list[str]) -> list[str]:
        unknown = [part for part in parts if part not in PART_NAMES]
        if unknown:
            raise ValueError(f"unknown parts {unknown}; known: {', '.join(PART_NAMES)}")
        if not parts:
            raise ValueError(f"names no part; known: {', '.join(PART_NAMES)}")
        if len(set(parts)) != len(parts):
            raise ValueError("names a part twice")
        return parts

    @model_validator(mode="after")
    def _accounts_where(self) -> Config:
        if self.accounts_in_keys and "accounts" in self.run:
            raise ValueError(
                "run names accounts, but accounts_in_keys is on (the keys process serves "
                "accounts); set accounts_in_keys: false to run accounts as its own part"
            )
        if not self.accounts_in_keys and "run" not in self.model_fields_set:
            self.run = [*self.run[:-1], "accounts", self.run[-1]]  # before the gateway
        return self

    @model_validator(mode="after")
    def _retry_bounds(self) -> Config:
        if self.sender_min_retry_interval > self.sender_max_retry_interval:
            raise ValueError("sender_min_retry_interval must not exceed sender_max_retry_interval")
        return self

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

    @property
    def internal_tls_directory(self) -> Path:
        return self.internal_tls_dir or self.data_dir / "internal"

    @property
    def internal_ca_certificate(self) -> Path:
        return self.internal_ca_certificate_path or self.internal_tls_directory / "ca.crt"

    @property
    def internal_ca_key(self) -> Path:
        return self.internal_ca_key_path or self.internal_tls_directory / "ca.key"

    def listen_address(self, part: str) -> str:
        return str(getattr(self, f"{part}_listen"))

    def metrics_address(self, part: str) -> str:
        return str(getattr(self, f"{part}_metrics_listen"))

    def host_part(self, service: str) -> str:
        """The part whose process serves ``service``: ``keys`` for ``accounts`` while
        accounts_in_keys is on, else the service itself."""
        return "keys" if service == "accounts" and self.accounts_in_keys else service

    def hosted_services(self, part: str) -> list[str]:
        """The services ``part``'s process serves besides its own."""
        return ["accounts"] if part == "keys" and self.accounts_in_keys else []

    def service_address(self, service: str) -> str:
        explicit = getattr(self, f"{service}_address")
        if explicit:
            return str(explicit)
        host = self.host_part(service)
        if host != service:
            return self.service_address(host)  # keys_address, when accounts_in_keys
        return self.listen_address(service)


# Loading ---------------------------------------------------------------------------


def env_name(option: str) -> str:
    """The environment variable that sets ``option``."""
    return "DATABASE_URL" if option == "database_url" else f"{ENV_PREFIX}{option.upper()}"


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (tests pass their own)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Config)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
    return str(problem)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML at {_yaml_problem(exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must hold a mapping of option: value")
    return loaded


def _describe_error(error: Mapping[str, Any], from_env: set[str]) -> str:
    location = [str(part) for part in error["loc"]]
    option = location[0] if location else ""
    if option == "DATABASE_URL":
        option = "database_url"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(option, Config.model_fields, n=1)
        message = "not an option" + (f" (did you mean {close[0]}?)" if close else "")
    elif error.get("input") is not None and error["type"] not in ("value_error", "assertion_error"):
        message = f"{message} (got {error['input']!r})"
    where = (option or "configuration") + "".join(
        f"[{part}]" if part.isdigit() else f".{part}" for part in location[1:]
    )
    if option in from_env:
        where += f" (from {env_name(option)})"
    return f"{where}: {message}"


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (if any) and apply environment overrides; check every option."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("MXFED_CONFIG")
    values: dict[str, Any] = _read_file(Path(path)) if path else {}
    try:
        from_environment = _Environment(environ)()
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    # Names in the environment win over the file's, whatever alias either used.
    if "database_url" in from_environment:
        values.pop("DATABASE_URL", None)
    values.update(from_environment)
    try:
        return Config(**values)
    except ValidationError as exc:
        from_env = set(from_environment)
        raise ConfigError(
            "; ".join(_describe_error(error, from_env) for error in exc.errors())
        ) from None


def sample_yaml() -> str:
    """Every option with its documentation and its default: a config file to start from."""
    lines = [
        "# mxfed configuration: every option, its meaning and its default.",
        "# Environment variables override this file: MXFED_<OPTION> in upper case",
        "# (lists comma-separated; DATABASE_URL for database_url).",
        "# Check a file with `mxfed config check --config FILE`.",
    ]
    for option, field in Config.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append("")
        for paragraph in (field.description or "").split("\n\n"):
            text = " ".join(paragraph.split())
            lines.extend(textwrap.wrap(text, 88, initial_indent="# ", subsequent_indent="# "))
        lines.append(f"# env: {env_name(option)}")
        value = _plain(default)
        dumped = yaml.safe_dump({option: value}, default_flow_style=False, sort_keys=False)
        lines.extend(dumped.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """``MXFED_*`` variables that set no option (ignored; ``mxfed config check`` lists them)."""
    known = {env_name(option) for option in Config.model_fields} | {"MXFED_CONFIG"}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )
