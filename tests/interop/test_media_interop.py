"""Authenticated media with a real Synapse, both ways.

- A Synapse user downloads media uploaded to mxfed through Synapse's own client
  API (``/_matrix/client/v1/media/download/{mxfed}/{id}`` with an access
  token): Synapse fetches it from mxfed's ``/_matrix/federation/v1/media/download``
  and reads our multipart answer with its own parser. Its thumbnail too (Synapse
  makes remote thumbnails from the content it fetched).
- An mxfed local actor (``mxfed media download`` / ``thumbnail``) gets media a
  Synapse user uploaded: mxfed fetches it over Synapse's authenticated federation
  endpoints (no fallback), and Synapse makes the thumbnail it serves us.
"""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from PIL import Image
from synapse_harness import SynapseClient, SynapseServer

from tests.support.media import png
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


def media_cli(mxfed: MxfedProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "--config", str(mxfed.config_path), "media", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def remote_fetches(mxfed: MxfedProcess, kind: str, outcome: str) -> float:
    port = mxfed.metrics_ports["media"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = rf'^mxfed_media_remote_fetches_total\{{kind="{kind}",outcome="{outcome}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def synapse_download(
    synapse: SynapseServer, token: str, server_name: str, media_id: str, what: str, query: str = ""
) -> httpx.Response:
    path = f"/_matrix/client/v1/media/{what}/{quote(server_name, safe='')}/{media_id}"
    async with httpx.AsyncClient(base_url=synapse.client_url, timeout=60, trust_env=False) as http:
        return await http.get(
            path + (f"?{query}" if query else ""), headers={"Authorization": f"Bearer {token}"}
        )


async def test_synapse_user_downloads_media_uploaded_to_mxfed(
    mxfed: MxfedProcess, synapse: SynapseServer, synapse_client: SynapseClient, tmp_path: Path
) -> None:
    _, token = await synapse_client.register(f"viewer_{secrets.token_hex(4)}")
    picture = png(640, 480, (12, 200, 90))
    source = tmp_path / "landscape.png"
    source.write_bytes(picture)
    uploaded = await asyncio.to_thread(
        media_cli, mxfed, "upload", str(source), "--user", f"@alice:{mxfed.server_name}"
    )
    assert uploaded.returncode == 0, uploaded.stderr
    mxc = uploaded.stdout.strip()
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    assert server_name == mxfed.server_name

    response = await synapse_download(synapse, token, server_name, media_id, "download")
    assert response.status_code == 200, response.text
    assert response.content == picture
    assert response.headers["content-type"] == "image/png"
    assert "landscape.png" in response.headers["content-disposition"]

    response = await synapse_download(
        synapse, token, server_name, media_id, "thumbnail", "width=32&height=32&method=crop"
    )
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)

    # Unknown media on mxfed is a 404 through Synapse too.
    response = await synapse_download(synapse, token, server_name, "noSuchMedia", "download")
    assert response.status_code == 404


async def test_mxfed_actor_downloads_media_uploaded_to_synapse(
    mxfed: MxfedProcess, synapse: SynapseServer, synapse_client: SynapseClient, tmp_path: Path
) -> None:
    _, token = await synapse_client.register(f"uploader_{secrets.token_hex(4)}")
    picture = png(800, 600, (250, 120, 0))
    async with httpx.AsyncClient(base_url=synapse.client_url, timeout=60, trust_env=False) as http:
        response = await http.post(
            "/_matrix/media/v3/upload?filename=sunset.png",
            content=picture,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
    assert response.status_code == 200, response.text
    mxc = response.json()["content_uri"]
    assert mxc.startswith(f"mxc://{synapse.server_name}/")
    fallbacks = await asyncio.to_thread(remote_fetches, mxfed, "content", "fallback")

    target = tmp_path / "copy.png"
    done = await asyncio.to_thread(media_cli, mxfed, "download", mxc, "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == picture
    assert await asyncio.to_thread(remote_fetches, mxfed, "content", "fetched") >= 1
    assert await asyncio.to_thread(remote_fetches, mxfed, "content", "fallback") == fallbacks
    info = await asyncio.to_thread(media_cli, mxfed, "info", mxc, "--json")
    assert '"upload_name": "sunset.png"' in info.stdout and '"remote": true' in info.stdout

    thumb = tmp_path / "thumb"
    done = await asyncio.to_thread(
        media_cli, mxfed, "thumbnail", mxc, "-W", "96", "-H", "96", "--method", "crop", "-o",
        str(thumb),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Image.open(thumb).size == (96, 96)
    assert await asyncio.to_thread(remote_fetches, mxfed, "thumbnail", "fetched") >= 1

    missing = await asyncio.to_thread(
        media_cli, mxfed, "download", f"mxc://{synapse.server_name}/nothingHere", "-o", str(target)
    )
    assert missing.returncode == 1 and "M_NOT_FOUND" in missing.stderr
