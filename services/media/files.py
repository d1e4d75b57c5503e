"""The content-addressed file store: every file named by the SHA-256 of its bytes.

Layout under the store root (``media_store_path``, default ``<data_dir>/media``)::

    content/ab/cd/abcd…   one file per distinct content (uploads, cached remote media, thumbnails)
    tmp/                  files being written; moved into content/ once complete

A write goes to ``tmp/`` while the bytes are hashed and counted, is flushed
to disk (fsync) and then renamed into place, so a file under ``content/`` is
always whole and named by its digest. The same bytes stored twice are one file.
Replicas on several machines share the root (a network file system): renames
within one file system are atomic and names never collide. Disk work runs in
threads, never on the event loop; nothing is read whole into memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from matrix_protocol.media import SNIFF_BYTES

CHUNK_BYTES = 256 * 1024
# A file left in tmp/ longer than this was abandoned by a crashed writer.
STALE_TEMPORARY_SECONDS = 24 * 3600


class TooLarge(Exception):
    """More bytes than the writer's limit."""


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int
    head: bytes  # the first bytes, for sniffing


class FileWriter:
    """Bytes in, one stored file out: ``write`` chunks, then ``commit`` (or ``abort``)."""

    def __init__(self, store: FileStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.size = 0
        self.head = b""
        self._hash = hashlib.sha256()
        self._path = store.tmp / uuid.uuid4().hex
        self._file: BinaryIO | None = None

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge(f"more than {self.limit} bytes")
        if len(self.head) < SNIFF_BYTES:
            self.head += data[: SNIFF_BYTES - len(self.head)]
        await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed in commit/abort
        self._file.write(data)
        self._hash.update(data)  # hashlib releases the GIL for large buffers

    async def commit(self) -> StoredFile:
        digest = self._hash.hexdigest()
        await asyncio.to_thread(self._commit, digest)
        return StoredFile(digest, self.size, self.head)

    def _commit(self, digest: str) -> None:
        if self._file is None:
            self._file = open(self._path, "wb")  # noqa: SIM115 - an empty file
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        destination = self.store.path_of(digest)
        if destination.exists():
            self._path.unlink(missing_ok=True)  # the same bytes are already stored
            return
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, destination)
        directory = os.open(destination.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def abort(self) -> None:
        await asyncio.to_thread(self._abort)

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
        self._path.unlink(missing_ok=True)


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.content = root / "content"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the directories; drop temporary files abandoned by crashed writers."""
        self.content.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for path in self.tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue  # another replica cleaned it up

    def path_of(self, sha256: str) -> Path:
        return self.content / sha256[:2] / sha256[2:4] / sha256

    def writer(self, limit: int) -> FileWriter:
        return FileWriter(self, limit)

    async def store_bytes(self, data: bytes) -> StoredFile:
        """Store a small object (a thumbnail) held in memory anyway."""
        writer = self.writer(len(data))
        try:
            await writer.write(data)
            return await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path_of(sha256).is_file)

    async def delete(self, sha256: str) -> None:
        await asyncio.to_thread(self.path_of(sha256).unlink, True)

    async def read_small(self, sha256: str, limit: int) -> bytes:
        """A file of at most ``limit`` bytes, in one go (one trip to a thread, not four)."""

        def read() -> bytes:
            with open(self.path_of(sha256), "rb") as handle:
                return handle.read(limit + 1)

        data = await asyncio.to_thread(read)
        if len(data) > limit:
            raise ValueError(f"{sha256} is larger than {limit} bytes")
        return data

    async def open(self, sha256: str) -> ContentReader:
        """The file, open for reading; ``FileNotFoundError`` if it is not stored.

        Once open, the file reads whole even if it is deleted meanwhile (eviction).
        """
        handle = await asyncio.to_thread(open, self.path_of(sha256), "rb")
        return ContentReader(handle)


class ContentReader:
    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    async def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The bytes in order; the file is closed at the end (or when the caller stops)."""
        try:
            while chunk := await asyncio.to_thread(self._handle.read, chunk_bytes):
                yield chunk
        finally:
            await self.close()

    async def close(self) -> None:
        if not self._handle.closed:
            await asyncio.to_thread(self._handle.close)
