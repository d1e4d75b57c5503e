"""Media served over federation: requests/s and MB/s, against Synapse in the same run (not a test).

A whole mxfed (``mxfed run``, throw-away database on 127.0.0.1:5432) and a
Synapse 1.163 (sqlite, from the test harness) are up at once. The same files
(100 KB and 10 MB of random bytes) are uploaded to both: to mxfed through the
media service's gRPC API, to Synapse through its client API. A FakeHomeserver
then downloads them with signed X-Matrix requests from
``/_matrix/federation/v1/media/download/{id}`` of each server in turn, with
``--clients`` concurrent keep-alive connections, for ``--seconds`` each, and
checks every answer's length. The client runs on the same two cores: the rates
are a floor for both servers.

Then memory: the RSS of mxfed's media process (and gateway) sampled while
ten clients download a 100 MB file at once, first reading as fast as they
can, then reading slowly (about 10 MB/s each), where anything that buffered
ahead of the reader would show as hundreds of MB.

    .venv/bin/python bench/bench_media.py [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from synapse_harness import SynapseServer  # noqa: E402

from mxfed_api.media.v1 import media_pb2, media_pb2_grpc  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.fake_homeserver import FakeHomeserver  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402

MiB = 1024 * 1024
SIZES = {"100 KB": 100 * 1000, "10 MB": 10 * 1000 * 1000}
BIG = 100 * 1000 * 1000


@dataclass
class Target:
    name: str
    base_url: str
    server_name: str
    media_ids: dict[str, str]


async def upload_to_mxfed(mxfed: MxfedProcess, data: bytes) -> str:
    async def requests() -> AsyncIterator[media_pb2.PerformUploadRequest]:
        yield media_pb2.PerformUploadRequest(
            start=media_pb2.UploadStart(content_type="application/octet-stream")
        )
        for start in range(0, len(data), 256 * 1024):
            yield media_pb2.PerformUploadRequest(data=data[start : start + 256 * 1024])

    async with mxfed.channel("media") as channel:
        reply = await media_pb2_grpc.MediaStub(channel).PerformUpload(requests(), timeout=300)
    return reply.media_id


async def upload_to_synapse(synapse: SynapseServer, token: str, data: bytes) -> str:
    async with httpx.AsyncClient(base_url=synapse.client_url, timeout=120) as http:
        response = await http.post(
            "/_matrix/media/v3/upload?filename=blob",
            content=data,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
            },
        )
        response.raise_for_status()
    return str(response.json()["content_uri"]).rsplit("/", 1)[1]


def session() -> aiohttp.ClientSession:
    """One keep-alive connection per client (aiohttp: the client must not be the bottleneck)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=1),
        timeout=aiohttp.ClientTimeout(total=600),
        auto_decompress=False,
    )


async def download(
    http: aiohttp.ClientSession,
    requester: FakeHomeserver,
    target: Target,
    media_id: str,
    on_chunk: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """One signed download; the body is read and dropped chunk by chunk (its size returned)."""
    uri = f"/_matrix/federation/v1/media/download/{quote(media_id, safe='')}"
    headers = {"Authorization": requester.authorization("GET", target.server_name, uri)}
    received = 0
    async with http.get(target.base_url + uri, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {response.status} {await response.read()!r}")
        async for chunk in response.content.iter_chunked(256 * 1024):
            received += len(chunk)
            if on_chunk is not None:
                await on_chunk(len(chunk))
    return received


async def rate(
    requester: FakeHomeserver, target: Target, label: str, size: int, seconds: float, clients: int
) -> tuple[float, float, int]:
    """Downloads/s and MB/s, and the number of downloads made (warm-up ones included)."""
    media_id = target.media_ids[label]
    counts = [0] * clients
    received = [0] * clients

    async def client(index: int, until: float) -> None:
        async with session() as http:
            await download(http, requester, target, media_id)  # warm the connection
            while time.perf_counter() < until:
                got = await download(http, requester, target, media_id)
                if got < size:
                    raise RuntimeError(f"{target.name}: short answer ({got} < {size})")
                counts[index] += 1
                received[index] += got

    started = time.perf_counter()
    await asyncio.gather(*(client(i, started + seconds) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, sum(received) / elapsed / MiB, sum(counts) + clients


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def part_process(mxfed: MxfedProcess, part: str) -> psutil.Process:
    assert mxfed.process is not None
    for child in psutil.Process(mxfed.process.pid).children():
        cmdline = child.cmdline()
        if "--service" in cmdline and cmdline[cmdline.index("--service") + 1] == part:
            return child
    raise RuntimeError(f"no {part} process")


async def memory_while_downloading(
    mxfed: MxfedProcess, requester: FakeHomeserver, target: Target, media_id: str, slow: bool
) -> tuple[float, float, float, float]:
    media_process, gateway = part_process(mxfed, "media"), part_process(mxfed, "gateway")
    idle = media_process.memory_info().rss / MiB
    peaks = {"media": 0.0, "gateway": 0.0}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peaks["media"] = max(peaks["media"], media_process.memory_info().rss / MiB)
            peaks["gateway"] = max(peaks["gateway"], gateway.memory_info().rss / MiB)
            await asyncio.sleep(0.05)

    async def throttle(size: int) -> None:
        await asyncio.sleep(size / (10 * MiB))  # about 10 MB/s per reader

    async def one() -> int:
        async with session() as http:
            return await download(http, requester, target, media_id, throttle if slow else None)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    if slow:
        # Ten slow readers for a while (each would take ~10 s for the whole file).
        tasks = [asyncio.create_task(one()) for _ in range(10)]
        await asyncio.sleep(4)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        total = 0
    else:
        total = sum(await asyncio.gather(*(one() for _ in range(10))))
        assert total >= 10 * BIG, total  # the content and its multipart framing
    elapsed = time.perf_counter() - started
    done.set()
    await sampler
    return idle, peaks["media"], peaks["gateway"], total / elapsed / MiB


async def main(seconds: float, clients: int) -> None:
    database_url = await create_database("mxfed_bench_media")
    requester = FakeHomeserver(key_version="bench1")
    await requester.start()
    synapse = SynapseServer()
    with tempfile.TemporaryDirectory() as scratch:
        mxfed = MxfedProcess(
            Path(scratch) / "data",
            database_url,
            extra_config={
                "media_max_bytes": 200 * 1000 * 1000,
                "media_downloads_per_origin": 16,
                "log_level": "WARNING",
            },
        )
        try:
            await asyncio.to_thread(mxfed.start)
            await asyncio.to_thread(synapse.start)
            async with synapse.client() as synapse_client:
                _, token = await synapse_client.register("bench")
            files = {label: os.urandom(size) for label, size in SIZES.items()}
            ours = Target("mxfed", mxfed.federation_url, mxfed.server_name, {})
            theirs = Target("Synapse", synapse.federation_url, synapse.server_name, {})
            for label, data in files.items():
                ours.media_ids[label] = await upload_to_mxfed(mxfed, data)
                theirs.media_ids[label] = await upload_to_synapse(synapse, token, data)

            parts = {name: part_process(mxfed, name) for name in ("gateway", "keys", "media")}
            synapse_process = psutil.Process(synapse.pid)
            print(f"media downloads over federation, {clients} clients, {seconds:.0f} s each")
            print(
                f"{'file':>8} {'server':>8} {'downloads/s':>12} {'MB/s':>8}"
                "   CPU ms per download (server processes)"
            )
            for label, size in SIZES.items():
                results = {}
                for target in (ours, theirs):
                    watched = parts if target is ours else {"synapse": synapse_process}
                    before = {name: cpu_seconds(process) for name, process in watched.items()}
                    per_second, mb_per_second, count = await rate(
                        requester, target, label, size, seconds, clients
                    )
                    spent = {
                        name: (cpu_seconds(process) - before[name]) * 1000 / count
                        for name, process in watched.items()
                    }
                    results[target.name] = per_second
                    print(
                        f"{label:>8} {target.name:>8} {per_second:12.1f} {mb_per_second:8.1f}   "
                        + ", ".join(f"{name} {ms:.2f}" for name, ms in spent.items())
                    )
                print(f"{label:>8} {'ratio':>8} {results['mxfed'] / results['Synapse']:11.1f}x")

            big = await upload_to_mxfed(mxfed, os.urandom(BIG))
            for slow in (False, True):
                idle, media_peak, gateway_peak, speed = await memory_while_downloading(
                    mxfed, requester, ours, big, slow
                )
                how = "slow readers (~10 MB/s each, 4 s)" if slow else "as fast as they read"
                print(
                    f"ten 100 MB downloads at once, {how}: media process RSS {idle:.0f} MiB idle,"
                    f" peak {media_peak:.0f} MiB; gateway peak {gateway_peak:.0f} MiB"
                    + ("" if slow else f"; {speed:.0f} MB/s in all")
                )
        except BaseException:
            print(mxfed.log_tail(400), file=sys.stderr)
            raise
        finally:
            await asyncio.to_thread(synapse.stop)
            await asyncio.to_thread(mxfed.stop)
            await requester.stop()
            await drop_database(database_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.clients))
