"""``mxfed keys show`` and ``mxfed keys rotate`` against a running keys service."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from tests.support.grpc_plane import session_tls_dir


async def _mxfed(keys_service, *args: str) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MXFED_")}
    env["MXFED_KEYS_ADDRESS"] = keys_service.address
    env["MXFED_INTERNAL_TLS_DIR"] = str(session_tls_dir())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mxfed.cli",
        "keys",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_show_and_rotate(keys_service) -> None:
    code, output = await _mxfed(keys_service, "show", "--json")
    assert code == 0, output
    before = orjson.loads(output)
    (old_key_id,) = before["verify_keys"]

    code, output = await _mxfed(keys_service, "rotate")
    assert code == 0, output
    assert f"{old_key_id} published as expired" in output

    code, output = await _mxfed(keys_service, "show")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("server keys-test.example, published until ")
    assert lines[1].startswith("current  ed25519:") and old_key_id not in lines[1]
    assert lines[2].startswith(f"expired  {old_key_id}  ")


async def test_service_unreachable(keys_service) -> None:
    keys_service.address = "127.0.0.1:1"
    code, output = await _mxfed(keys_service, "show")
    assert code == 1
    assert "UNAVAILABLE: the keys service at 127.0.0.1:1 does not answer" in output
    assert "is `./bootstrap run` (or `mxfed run`) running" in output
