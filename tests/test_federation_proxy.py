"""deploy/compose/haproxy.cfg, the federation proxy of compose and Kubernetes, run for real:
TLS in front, every request of one X-Matrix origin to the same gateway replica (the
per-origin limits live in each replica's memory), the rest spread, the routing header
never taken from outside.

Needs the ``haproxy`` binary (Debian: ``apt-get install haproxy``); the gateways are small
HTTPS servers that answer which replica they are, since only the routing is under test.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mxfed.identity_files import ensure_tls_pair
from mxfed.protogen import REPO_ROOT
from tests.support.ports import HeldPort, ReservedPort

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
)
CONFIG = REPO_ROOT / "deploy" / "compose" / "haproxy.cfg"
REPLICAS = 3
GUARD = 60  # a hang guard, not a measure

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="needs the haproxy binary")


class _Gateway(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        body = json.dumps(
            {"replica": self.server.replica, "origin": self.headers.get("X-Mxfed-Origin")}  # type: ignore[attr-defined]
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet."""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    scratch = tmp_path_factory.mktemp("proxy")
    certificate, key = scratch / "tls.crt", scratch / "tls.key"
    ensure_tls_pair(certificate, key, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)

    servers, held = [], []
    for replica in range(REPLICAS):
        port = HeldPort()
        held.append(port)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", port.port), _Gateway, bind_and_activate=False
        )
        server.socket.close()
        server.socket = context.wrap_socket(port.listening_socket(), server_side=True)
        server.socket.setblocking(True)
        server.replica = replica  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    # The real file, with what compose and Kubernetes give it replaced by loopback
    # ports: the certificate file, the listening ports and the DNS-discovered replicas.
    pem = scratch / "federation.pem"
    pem.write_bytes(certificate.read_bytes() + key.read_bytes())
    front, health = ReservedPort(), ReservedPort()
    text = CONFIG.read_text()
    replacements = {
        "bind :8448 ssl crt /tmp/federation.pem": f"bind 127.0.0.1:{front.port} ssl crt {pem}",
        "bind :8405": f"bind 127.0.0.1:{health.port}",
        " resolvers dns init-addr none": "",
        'server-template gateway 16 "${GATEWAY_HOST}:8448"': "\n    ".join(
            f"server gateway{i} 127.0.0.1:{port.port}" for i, port in enumerate(held)
        ),
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config = scratch / "haproxy.cfg"
    config.write_text(text)
    check = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=GUARD
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The reservations stay held (a lock, not a socket) until haproxy is gone.
    process = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"https://127.0.0.1:{front.port}"
        _await_every_replica_up(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=GUARD)
        for server in servers:
            server.shutdown()
        for port in held:
            port.release()
        front.release()
        health.release()


def _await_every_replica_up(url: str) -> None:
    """Until the health checks have found every replica (requests without X-Matrix are
    spread over the replicas that are up)."""
    seen: set[int] = set()
    deadline = time.monotonic() + GUARD
    with httpx.Client(verify=False, timeout=5) as client:
        while len(seen) < REPLICAS:
            assert time.monotonic() < deadline, f"replicas up: {seen}"
            try:
                reply = client.get(f"{url}/_matrix/federation/v1/version")
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if reply.status_code == 200:
                seen.add(reply.json()["replica"])
            else:
                time.sleep(0.1)


def _x_matrix(origin: str, quoted: bool = True) -> str:
    value = f'"{origin}"' if quoted else origin
    return f'X-Matrix origin={value},destination="mxfed.example",key="ed25519:a",sig="c2ln"'


def _ask(client: httpx.Client, url: str, authorization: str | None, **headers: str) -> dict:
    if authorization is not None:
        headers["Authorization"] = authorization
    # A new connection each time: routing must not lean on keep-alive.
    reply = client.get(f"{url}/_matrix/federation/v1/send/1", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_every_request_of_one_origin_reaches_one_replica(proxy: str) -> None:
    origins = [f"server{i}.example" for i in range(12)] + ["matrix.org", "127.0.0.1:8448"]
    chosen = {}
    for origin in origins:
        replicas = set()
        for attempt in range(4):
            with httpx.Client(verify=False, timeout=10) as client:
                answer = _ask(client, proxy, _x_matrix(origin, quoted=attempt % 2 == 0))
            assert answer["origin"] == origin
            replicas.add(answer["replica"])
        assert len(replicas) == 1, (origin, replicas)
        chosen[origin] = replicas.pop()
    # And the origins are spread over the replicas.
    assert len(set(chosen.values())) > 1


def test_requests_without_x_matrix_are_spread_and_nobody_picks_the_replica(proxy: str) -> None:
    replicas = set()
    with httpx.Client(verify=False, timeout=10) as client:
        for _ in range(3 * REPLICAS):
            answer = _ask(client, proxy, None, **{"X-Mxfed-Origin": "forced.example"})
            assert answer["origin"] is None  # the routing header is the proxy's own
            replicas.add(answer["replica"])
    assert len(replicas) > 1
