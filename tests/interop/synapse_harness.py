"""A real Synapse homeserver on loopback, for interop tests and benchmarks.

``SynapseServer`` writes a config into a fresh temp dir (self-signed TLS cert for
127.0.0.1, a signing key, SQLite or PostgreSQL (``postgres_config``), short federation
backoff, generous rate limits, loopback allowed for outbound federation), runs
``python -m synapse.app.homeserver`` as a child process in its own process group, and
waits until both listeners answer.

``start_all`` starts several at once (each on SQLite). ``SynapseClient`` is a small
async client-server API helper (httpx) for driving one.

Plain Python: no pytest imports, so benchmarks can use it too.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import hashlib
import hmac
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx
import yaml
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)

from tests.support.ports import ReservedPort

JsonDict = dict[str, Any]

#: Rate limiter settings that never bite in tests.
_UNLIMITED = {"per_second": 10_000, "burst_count": 100_000}

#: Keep the temp dir (config, logs, sqlite db) after stop() when this env var is set.
KEEP_DIR_ENV = "MXFED_KEEP_SYNAPSE_DIR"


def make_self_signed_cert(cert_path: Path, key_path: Path, ip: str = "127.0.0.1") -> None:
    """Write a self-signed cert (SAN IP ``ip`` and DNS localhost) and its EC key as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)


def _deep_merge(base: JsonDict, extra: JsonDict) -> JsonDict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v
    return base


class SynapseStartError(RuntimeError):
    pass


class SynapseServer:
    """One Synapse homeserver on 127.0.0.1 with its own temp dir.

    ``server_name`` is ``127.0.0.1:<fed_port>``; federation (and /_matrix/key) is served
    over TLS on fed_port, the client API (and /_synapse/admin) over plain HTTP on
    client_port. With ``public_port`` the server is named ``127.0.0.1:<public_port>``
    instead: whatever listens there (a gate that can cut it off, say) passes the
    federation traffic on to fed_port.
    """

    def __init__(
        self,
        *,
        default_room_version: str | None = None,
        extra_config: JsonDict | None = None,
        log_level: str = "INFO",
        python: str | None = None,
        startup_timeout: float = 60.0,
        base_dir: str | os.PathLike[str] | None = None,
        keep_dir: bool | None = None,
        public_port: int | None = None,
    ) -> None:
        self.default_room_version = default_room_version
        self.public_port = public_port
        self.extra_config = extra_config or {}
        self.log_level = log_level
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self._base_dir = base_dir
        self.keep_dir = bool(os.environ.get(KEEP_DIR_ENV)) if keep_dir is None else keep_dir

        self.dir: Path | None = None
        self.fed_port = 0
        self.client_port = 0
        self._reserved_ports: list[ReservedPort] = []
        self.registration_shared_secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._signing_key: Any = None

    @staticmethod
    def postgres_config(database_url: str) -> JsonDict:
        """``extra_config`` that puts Synapse on the PostgreSQL database at
        ``database_url`` (``postgresql://user@host:port/name``, trust auth; made with the
        C collation Synapse requires) instead of SQLite."""
        url = urlsplit(database_url)
        return {
            "database": {
                "name": "psycopg2",
                "args": {
                    "user": url.username or "postgres",
                    "database": url.path.lstrip("/"),
                    "host": url.hostname or "127.0.0.1",
                    "port": url.port or 5432,
                    "cp_min": 5,
                    "cp_max": 10,
                },
            }
        }

    # ---- properties -----------------------------------------------------------------

    @property
    def server_name(self) -> str:
        return f"127.0.0.1:{self.public_port or self.fed_port}"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.fed_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def config_path(self) -> Path:
        return self._require_dir() / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self._require_dir() / "homeserver.log"

    @property
    def stdout_path(self) -> Path:
        return self._require_dir() / "stdout.log"

    @property
    def signing_key_path(self) -> Path:
        return self._require_dir() / "signing.key"

    @property
    def tls_cert_path(self) -> Path:
        return self._require_dir() / "tls.crt"

    @property
    def signing_key(self) -> Any:
        """The server's signedjson/nacl SigningKey (has .alg and .version)."""
        if self._signing_key is None:
            with open(self.signing_key_path) as f:
                self._signing_key = read_signing_keys(f)[0]
        return self._signing_key

    @property
    def signing_key_id(self) -> str:
        """e.g. ``ed25519:a_AbCd``"""
        return f"{self.signing_key.alg}:{self.signing_key.version}"

    @property
    def verify_key(self) -> Any:
        """nacl VerifyKey with .alg/.version set (for signedjson.sign.verify_signed_json)."""
        return get_verify_key(self.signing_key)

    @property
    def verify_key_base64(self) -> str:
        return encode_verify_key_base64(self.verify_key)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _require_dir(self) -> Path:
        if self.dir is None:
            raise RuntimeError("SynapseServer has no directory yet; call start()")
        return self.dir

    # ---- config ---------------------------------------------------------------------

    def build_config(self) -> JsonDict:
        d = self._require_dir()
        cfg: JsonDict = {
            "server_name": self.server_name,
            "public_baseurl": self.client_url + "/",
            "pid_file": str(d / "homeserver.pid"),
            "report_stats": False,
            "listeners": [
                {
                    "port": self.fed_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["federation", "keys"], "compress": False}],
                },
                {
                    "port": self.client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                },
            ],
            "tls_certificate_path": str(d / "tls.crt"),
            "tls_private_key_path": str(d / "tls.key"),
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "log_config": str(d / "log.yaml"),
            "media_store_path": str(d / "media_store"),
            "signing_key_path": str(self.signing_key_path),
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "registration_shared_secret": self.registration_shared_secret,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            # Outbound federation to self-signed loopback peers.
            "federation_verify_certificates": False,
            # Both blocklists always get 0.0.0.0 and :: added by Synapse; an empty list
            # (not omitting the key!) is what un-blocks 127.0.0.0/8 and ::1.
            "ip_range_blacklist": [],
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            "federation": {
                "client_timeout": "10s",
                "max_short_retry_delay": "1s",
                "max_long_retry_delay": "2s",
                "max_short_retries": 2,
                "max_long_retries": 2,
                # default is 10m: an unreachable peer would be skipped for ten minutes
                "destination_min_retry_interval": "1s",
                "destination_retry_multiplier": 1.5,
                "destination_max_retry_interval": "2s",
            },
            "use_presence": False,
            "presence": {"enabled": False},
            "allow_public_rooms_over_federation": True,
            "allow_public_rooms_without_auth": True,
            # default is [] which means *deny* every publication to the room directory
            "room_list_publication_rules": [{"action": "allow"}],
            "federation_rr_transactions_per_room_per_second": 10_000,
            "rc_message": _UNLIMITED,
            "rc_registration": _UNLIMITED,
            "rc_registration_token_validity": _UNLIMITED,
            "rc_login": {
                "address": _UNLIMITED,
                "account": _UNLIMITED,
                "failed_attempts": _UNLIMITED,
            },
            "rc_admin_redaction": _UNLIMITED,
            "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
            "rc_joins_per_room": _UNLIMITED,
            "rc_key_requests": _UNLIMITED,
            "rc_3pid_validation": _UNLIMITED,
            "rc_invites": {
                "per_room": _UNLIMITED,
                "per_user": _UNLIMITED,
                "per_issuer": _UNLIMITED,
            },
            "rc_third_party_invite": _UNLIMITED,
            "rc_media_create": _UNLIMITED,
            "rc_presence": {"per_user": _UNLIMITED},
            "rc_delayed_event_mgmt": _UNLIMITED,
            "rc_room_creation": _UNLIMITED,
            "rc_reports": _UNLIMITED,
            "rc_user_directory": _UNLIMITED,
            "rc_profile": _UNLIMITED,
            # Inbound federation: window_size ms; sleep/reject after N requests per window.
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 10_000,
                "sleep_delay": 1,
                "reject_limit": 100_000,
                "concurrent": 1000,
            },
            # A fresh db queues dozens of background updates, one a second by default;
            # run them back to back so they are done within a few seconds of startup.
            "background_updates": {"sleep_enabled": False},
            "enable_metrics": False,
            "url_preview_enabled": False,
        }
        if self.default_room_version is not None:
            cfg["default_room_version"] = str(self.default_room_version)
        return _deep_merge(cfg, self.extra_config)

    def _log_config(self) -> JsonDict:
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "loggers": {
                "synapse.storage.SQL": {"level": "WARNING"},
                "synapse.storage.txn": {"level": "WARNING"},
                "twisted": {"level": "WARNING"},
            },
            "root": {"level": self.log_level, "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def _prepare(self) -> None:
        if self._base_dir is not None:
            os.makedirs(self._base_dir, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="mxfed-synapse-", dir=self._base_dir))
        # Synapse binds its ports itself: reserve them for as long as it runs.
        self._reserved_ports = [ReservedPort(), ReservedPort()]
        self.fed_port, self.client_port = (reserved.port for reserved in self._reserved_ports)
        d = self.dir
        (d / "media_store").mkdir()
        make_self_signed_cert(d / "tls.crt", d / "tls.key")
        # Our own signing key, so the key id is known before Synapse starts.
        key = generate_signing_key("a_" + secrets.token_hex(2))
        with open(self.signing_key_path, "w") as f:
            write_signing_keys(f, [key])
        self._signing_key = key
        (d / "log.yaml").write_text(yaml.safe_dump(self._log_config(), sort_keys=False))
        self.config_path.write_text(yaml.safe_dump(self.build_config(), sort_keys=False))

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> SynapseServer:
        return self.wait_started(self.launch())

    def launch(self) -> float:
        """Write the config and start the process; returns when (monotonic) it started.

        :meth:`wait_started` then waits for it; :meth:`start` does both.
        """
        if self.proc is not None:
            raise RuntimeError("already started")
        t0 = time.monotonic()
        self._prepare()
        d = self._require_dir()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.stdout_path, "wb") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [self.python, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=d,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own session / process group
            )
        atexit.register(self.stop)
        return t0

    def wait_started(self, t0: float) -> SynapseServer:
        d = self._require_dir()
        try:
            self._wait_ready(t0 + self.startup_timeout)
        except (SynapseStartError, TimeoutError, OSError, httpx.HTTPError) as exc:
            tail = self.read_log_tail()
            self.stop(keep_dir=True)
            raise SynapseStartError(
                f"Synapse failed to start (timeout {self.startup_timeout:.0f}s; {exc}; "
                f"dir kept: {d})\n{tail}"
            ) from None
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        urls = [
            f"{self.federation_url}/_matrix/federation/v1/version",
            f"{self.client_url}/_matrix/client/versions",
        ]
        with httpx.Client(verify=False, timeout=2.0, trust_env=False) as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise SynapseStartError(f"Synapse exited with code {self.proc.returncode}")
                try:
                    if all(http.get(u).status_code == 200 for u in urls):
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("Synapse startup timed out")
                time.sleep(0.1)

    def restart(self) -> None:
        """Stop Synapse and start it again on the same directory, ports and database.

        What it held only in memory (e.g. federation queues) is lost.
        """
        proc = self.proc
        if proc is None:
            raise RuntimeError("not started")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.python, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self._require_dir(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait_ready(time.monotonic() + self.startup_timeout)

    def stop(self, keep_dir: bool | None = None) -> int | None:
        """SIGTERM our child by PID, SIGKILL after 10 s. Returns its exit code."""
        atexit.unregister(self.stop)
        rc = None
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # Popen won't signal a reaped PID
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            rc = proc.returncode
        for reserved in self._reserved_ports:
            reserved.release()
        self._reserved_ports = []
        keep = self.keep_dir if keep_dir is None else keep_dir
        if self.dir is not None and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return rc

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- diagnostics ----------------------------------------------------------------

    def read_log_tail(self, lines: int = 60) -> str:
        """Last lines of stdout/stderr and of homeserver.log."""
        out = []
        for path in (self.stdout_path, self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if text:
                out.append(f"--- {path.name} (last {lines} lines) ---")
                out.extend(text[-lines:])
        return "\n".join(out)

    def rss_bytes(self) -> int | None:
        """Resident set size of the Synapse process (Linux /proc)."""
        if not self.running:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def client(self, **kwargs: Any) -> SynapseClient:
        return SynapseClient(
            self.client_url,
            shared_secret=self.registration_shared_secret,
            server_name=self.server_name,
            **kwargs,
        )


# ---------------------------------------------------------------------------------------


def start_all(servers: Iterable[SynapseServer]) -> None:
    """Start several Synapses at once: all processes first, then wait for each.

    A start is mostly the interpreter importing Synapse (5–10 s), so two
    together take little longer than one. Each keeps its configured database (SQLite
    unless ``postgres_config`` says otherwise).
    """
    launched: list[tuple[SynapseServer, float]] = []
    try:
        for server in servers:
            launched.append((server, server.launch()))
        for server, t0 in launched:
            server.wait_started(t0)
    except BaseException:
        for server, _ in launched:
            server.stop()
        raise


# ---------------------------------------------------------------------------------------


class SynapseClientError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body}")
        self.status = status
        self.body = body

    @property
    def errcode(self) -> str | None:
        try:
            import json

            return json.loads(self.body).get("errcode")
        except (ValueError, AttributeError):
            return None


def _q(s: str) -> str:
    return quote(s, safe="")


class SynapseClient:
    """Tiny async Matrix client-server API helper against one Synapse's client port."""

    def __init__(
        self,
        base_url: str,
        *,
        shared_secret: str | None = None,
        server_name: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.shared_secret = shared_secret
        self.server_name = server_name
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, trust_env=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        json: Any = None,
        params: Any = None,
        timeout: float | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        kw: JsonDict = {}
        if timeout is not None:
            kw["timeout"] = timeout
        r = await self.http.request(method, path, json=json, params=params, headers=headers, **kw)
        if r.status_code // 100 != 2:
            raise SynapseClientError(method, path, r.status_code, r.text)
        return r.json() if r.content else {}

    # ---- accounts -------------------------------------------------------------------

    async def register(
        self,
        localpart: str,
        password: str | None = None,
        *,
        admin: bool = False,
        displayname: str | None = None,
    ) -> tuple[str, str]:
        """Register via the shared-secret admin API. Returns (user_id, access_token)."""
        if self.shared_secret is None:
            raise RuntimeError("register() needs the registration shared secret")
        password = password or secrets.token_hex(8)
        path = "/_synapse/admin/v1/register"
        nonce = (await self.request("GET", path))["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([
            nonce.encode(), localpart.encode(), password.encode(),
            b"admin" if admin else b"notadmin",
        ]))  # fmt: skip
        body: JsonDict = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname is not None:
            body["displayname"] = displayname
        resp = await self.request("POST", path, json=body)
        return resp["user_id"], resp["access_token"]

    async def whoami(self, token: str) -> JsonDict:
        return await self.request("GET", "/_matrix/client/v3/account/whoami", token)

    async def set_displayname(self, token: str, user_id: str, displayname: str) -> None:
        await self.request(
            "PUT",
            f"/_matrix/client/v3/profile/{_q(user_id)}/displayname",
            token,
            json={"displayname": displayname},
        )

    async def profile(self, user_id: str, token: str | None = None) -> JsonDict:
        return await self.request("GET", f"/_matrix/client/v3/profile/{_q(user_id)}", token)

    # ---- rooms ----------------------------------------------------------------------

    async def create_room(self, token: str, **body: Any) -> str:
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", token, json=body)
        return resp["room_id"]

    async def send_event(self, token: str, room_id: str, event_type: str, content: JsonDict) -> str:
        txn = uuid.uuid4().hex
        resp = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/{txn}",
            token,
            json=content,
        )
        return resp["event_id"]

    async def send_message(
        self, token: str, room_id: str, text: str, msgtype: str = "m.text"
    ) -> str:
        return await self.send_event(
            token, room_id, "m.room.message", {"msgtype": msgtype, "body": text}
        )

    async def send_state(
        self, token: str, room_id: str, event_type: str, content: JsonDict, state_key: str = ""
    ) -> str:
        resp = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
            token,
            json=content,
        )
        return resp["event_id"]

    async def join(
        self, token: str, room_id_or_alias: str, via: Iterable[str] | None = None
    ) -> str:
        """Join by id or alias. Room v12 ids carry no server: pass ``via`` for remote rooms."""
        via = list(via or [])
        # `via` is the v1.12+ name, `server_name` the older one; Synapse takes both.
        params = [("via", s) for s in via] + [("server_name", s) for s in via]
        resp = await self.request(
            "POST", f"/_matrix/client/v3/join/{_q(room_id_or_alias)}", token, json={},
            params=params,
        )  # fmt: skip
        return resp["room_id"]

    async def leave(self, token: str, room_id: str, reason: str | None = None) -> None:
        body = {"reason": reason} if reason else {}
        await self.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/leave", token,
                           json=body)  # fmt: skip

    async def ban(self, token: str, room_id: str, user_id: str) -> None:
        await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/ban",
            token,
            json={"user_id": user_id},
        )

    async def reset_connection(self, admin_token: str, destination: str) -> bool:
        """Admin API: end the backoff of ``destination`` and wake its queue.

        False when there was nothing to reset (the destination is up, or unknown).
        """
        try:
            await self.request(
                "POST",
                f"/_synapse/admin/v1/federation/destinations/{_q(destination)}/reset_connection",
                admin_token,
                json={},
            )
        except SynapseClientError as error:
            if error.status in (400, 404):
                return False
            raise
        return True

    async def invite(self, token: str, room_id: str, user_id: str) -> None:
        await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
            token,
            json={"user_id": user_id},
        )

    async def messages(
        self,
        token: str,
        room_id: str,
        dir: str = "b",
        limit: int = 10,
        from_token: str | None = None,
    ) -> JsonDict:
        params: JsonDict = {"dir": dir, "limit": limit}
        if from_token is not None:
            params["from"] = from_token
        return await self.request(
            "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/messages", token, params=params
        )

    async def state(self, token: str, room_id: str) -> list[JsonDict]:
        return await self.request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state", token)

    async def get_event(self, token: str, room_id: str, event_id: str) -> JsonDict:
        return await self.request(
            "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/event/{_q(event_id)}", token
        )

    async def put_room_alias(self, token: str, alias: str, room_id: str) -> None:
        await self.request(
            "PUT", f"/_matrix/client/v3/directory/room/{_q(alias)}", token,
            json={"room_id": room_id},
        )  # fmt: skip

    async def publish_room(self, token: str, room_id: str, visibility: str = "public") -> None:
        await self.request(
            "PUT", f"/_matrix/client/v3/directory/list/room/{_q(room_id)}", token,
            json={"visibility": visibility},
        )  # fmt: skip

    async def public_rooms(
        self, token: str | None = None, server: str | None = None, limit: int | None = None
    ) -> JsonDict:
        params: JsonDict = {}
        if server is not None:
            params["server"] = server
        if limit is not None:
            params["limit"] = limit
        return await self.request("GET", "/_matrix/client/v3/publicRooms", token, params=params)

    # ---- sync -----------------------------------------------------------------------

    async def sync(
        self, token: str, since: str | None = None, timeout: int = 0, filter: Any = None
    ) -> JsonDict:
        """``timeout`` is the long-poll time in milliseconds."""
        params: JsonDict = {"timeout": timeout}
        if since is not None:
            params["since"] = since
        if filter is not None:
            params["filter"] = filter if isinstance(filter, str) else _json_dumps(filter)
        return await self.request(
            "GET", "/_matrix/client/v3/sync", token, params=params,
            timeout=timeout / 1000 + 30,
        )  # fmt: skip

    async def wait_for_event(
        self,
        token: str,
        room_id: str,
        predicate: Callable[[JsonDict], bool],
        timeout: float = 20.0,
    ) -> JsonDict:
        """Return the first event in ``room_id`` (timeline, state or invite state) for
        which ``predicate`` is true, already there or arriving within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        resp = await self.sync(token)
        since = resp["next_batch"]
        found = _find_in_sync(resp, room_id, predicate)
        if found is None and room_id in resp.get("rooms", {}).get("join", {}):
            found = await self._find_in_messages(token, room_id, predicate)
        while found is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event in {room_id} within {timeout}s")
            resp = await self.sync(token, since=since, timeout=int(min(left, 5.0) * 1000))
            since = resp["next_batch"]
            found = _find_in_sync(resp, room_id, predicate)
            joined = resp.get("rooms", {}).get("join", {}).get(room_id)
            if found is None and joined and joined.get("timeline", {}).get("limited"):
                found = await self._find_in_messages(token, room_id, predicate)
        return found

    async def _find_in_messages(
        self, token: str, room_id: str, predicate: Callable[[JsonDict], bool]
    ) -> JsonDict | None:
        resp = await self.messages(token, room_id, dir="b", limit=100)
        for ev in resp.get("chunk", []):
            if predicate(ev):
                return ev
        return None

    # ---- e2e keys -------------------------------------------------------------------

    async def upload_device_keys(
        self,
        token: str,
        device_keys: JsonDict | None = None,
        one_time_keys: JsonDict | None = None,
        fallback_keys: JsonDict | None = None,
    ) -> JsonDict:
        body: JsonDict = {}
        if device_keys is not None:
            body["device_keys"] = device_keys
        if one_time_keys is not None:
            body["one_time_keys"] = one_time_keys
        if fallback_keys is not None:
            body["fallback_keys"] = fallback_keys
        return await self.request("POST", "/_matrix/client/v3/keys/upload", token, json=body)

    async def query_keys(
        self, token: str, device_keys: dict[str, list[str]], timeout_ms: int | None = None
    ) -> JsonDict:
        """``device_keys``: {user_id: [device_id, ...]} ([] = all devices)."""
        body: JsonDict = {"device_keys": device_keys}
        if timeout_ms is not None:
            body["timeout"] = timeout_ms
        return await self.request("POST", "/_matrix/client/v3/keys/query", token, json=body)


def _json_dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))


def _find_in_sync(
    resp: JsonDict, room_id: str, predicate: Callable[[JsonDict], bool]
) -> JsonDict | None:
    rooms = resp.get("rooms", {})
    candidates: list[JsonDict] = []
    for section in ("join", "leave"):
        room = rooms.get(section, {}).get(room_id)
        if room:
            candidates += room.get("state", {}).get("events", [])
            candidates += room.get("timeline", {}).get("events", [])
    invited = rooms.get("invite", {}).get(room_id)
    if invited:
        candidates += invited.get("invite_state", {}).get("events", [])
    for ev in candidates:
        if predicate(ev):
            return ev
    return None


async def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2) -> Any:
    """Poll a sync or async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
