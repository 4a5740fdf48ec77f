"""A bounded hand-off of byte chunks from the asyncio download to the ingest thread."""

from __future__ import annotations

import asyncio
import queue


class ReaderGone(Exception):
    """The consuming thread stopped reading (it failed or finished early)."""


class ChunkPipe:
    """Producer side is async (``put``/``finish``), consumer side is a blocking ``read``."""

    def __init__(self, max_chunks: int = 32) -> None:
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(max_chunks)
        self._buf = b""
        self._eof = False
        self._closed = False

    # -- producer (event loop) ------------------------------------------------------------
    async def put(self, chunk: bytes) -> None:
        await self._put(chunk)

    async def finish(self, error: BaseException | None = None) -> None:
        """End of stream; with ``error`` the reader raises it instead of seeing EOF."""
        try:
            await self._put(error)
        except ReaderGone:
            pass

    async def _put(self, item: bytes | BaseException | None) -> None:
        if self._closed:
            raise ReaderGone()
        try:
            self._q.put_nowait(item)
        except queue.Full:
            await asyncio.to_thread(self._put_blocking, item)

    def _put_blocking(self, item: bytes | BaseException | None) -> None:
        while not self._closed:
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise ReaderGone()

    # -- consumer (ingest thread) ---------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof:
            item = self._q.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                self._eof = True
                raise item
            else:
                self._buf = item
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Called by the consumer when it stops: unblocks and fails the producer."""
        self._closed = True
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
