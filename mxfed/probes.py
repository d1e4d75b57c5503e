"""The gateway's health probe: ``GET /health`` over TLS, as any client would send it.

Used by the gateway to report itself ready and by ``mxfed health``. The
certificate is not verified: the probe asks whether this process serves,
not whether it is who it says (that is the TLS client's job).
"""

from __future__ import annotations

import asyncio
import ssl

GATEWAY_HEALTH_PATH = "/health"


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def gateway_health(host: str, port: int, wait: float = 3.0) -> str:
    """``SERVING`` when the gateway at host:port answers 200 within ``wait`` seconds,
    else why not."""
    host = host.strip("[]")
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=_insecure_context())
    except (OSError, TimeoutError):
        return "UNAVAILABLE"
    try:
        request = f"GET {GATEWAY_HEALTH_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        async with asyncio.timeout(wait):
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return "UNAVAILABLE"
    finally:
        writer.close()
    return "SERVING" if status_line.split(b" ")[1:2] == [b"200"] else "NOT_SERVING"
