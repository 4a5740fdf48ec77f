"""Sniff an archive's compression from its first bytes and inflate it as a stream.

gzip goes through ISA-L (``isal``) in its own thread, so inflating overlaps with
hashing and writing; zstd through ``zstandard``; an uncompressed tar passes through.
Truncation and checksum failures surface as CorruptArchiveError with what happened.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from typing import BinaryIO, Literal, Protocol

import zstandard
from isal import igzip_lib, igzip_threaded

from cachemgr.errors import CorruptArchiveError, NotAnArchiveError

Compression = Literal["gzip", "zstd", "none"]
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_OTHER = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}
# ISA-L's own error for bad deflate data; a plain Exception, neither OSError nor zlib.error
# (isal's stubs declare it as an instance, hence the ignore).
_ISAL_ERROR: type[Exception] = igzip_lib.IsalError  # type: ignore[assignment]


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class PeekReader(io.RawIOBase):
    """Wraps a byte source so that the first bytes can be looked at and then replayed."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._head = b""

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            chunk = self._source.read(n - len(self._head))
            if not chunk:
                break
            self._head += chunk
        return self._head[:n]

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                if n < 0:
                    return out + self._source.read()
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._source.read(n)

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def sniff(head: bytes, name: str) -> Compression:
    """The compression of a stream that starts with ``head``; NotAnArchiveError otherwise."""
    if head.startswith(_GZIP):
        return "gzip"
    if head.startswith(_ZSTD):
        return "zstd"
    for magic, kind in _OTHER.items():
        if head.startswith(magic):
            raise NotAnArchiveError(
                f"{name}: not a model archive ({kind} data); serve a tar, .tar.gz or .tar.zst"
            )
    if len(head) >= 512:
        try:
            tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
            return "none"
        except tarfile.HeaderError:
            pass
    what = "an HTML page" if head.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")) else (
        "empty" if not head else "unrecognised data"
    )
    raise NotAnArchiveError(
        f"{name}: not a model archive (got {what}); check the URL or that the server "
        "answers ?tf-hub-format=compressed with a tar stream"
    )


class _ZstdReader(io.RawIOBase):
    """Inflates zstd frames with bounded memory.

    zstandard's ``decompressobj`` returns everything a call's input inflates to, and a zstd
    RLE block turns 4 bytes into 128 KiB: one 1 MiB read could be 32 GiB of RAM before any
    cap is counted. So the input goes in ``FEED``-byte pieces, only as output is wanted:
    at most ``FEED / 4 * 128 KiB`` (16 MiB) is inflated ahead of the reader, and the caps
    (counted by the reader, ``unpack.TreeBuilder``) stop a bomb while it streams.
    """

    FEED = 512

    def __init__(self, raw: Readable, name: str) -> None:
        self._raw = raw
        self._name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._pending = b""
        self._at = 0
        self._buf = b""
        self._pos = 0
        self._done = False
        self._mid_frame = True  # until a frame has ended (an empty stream is truncated too)

    def readable(self) -> bool:
        return True

    def _next_piece(self) -> bytes:
        if self._at >= len(self._pending):
            self._pending, self._at = self._raw.read(1 << 20), 0
            if not self._pending:
                return b""
        piece = self._pending[self._at:self._at + self.FEED]
        self._at += len(piece)
        return piece

    def read(self, n: int = -1) -> bytes:
        while self._pos >= len(self._buf) and not self._done:
            piece = self._next_piece()
            if not piece:
                if self._mid_frame:
                    raise CorruptArchiveError(
                        f"{self._name}: zstd stream is truncated; fetch the archive again"
                    )
                self._done = True
                break
            try:
                if self._obj.eof:  # the last piece ended a frame exactly: the next one starts here
                    self._obj = self._dctx.decompressobj()
                out = self._obj.decompress(piece)
                while self._obj.eof and self._obj.unused_data:
                    rest = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    out += self._obj.decompress(rest)  # under FEED bytes: bounded as well
            except zstandard.ZstdError as exc:
                raise CorruptArchiveError(f"{self._name}: zstd data is corrupt ({exc})") from None
            self._mid_frame = not self._obj.eof
            self._buf, self._pos = out, 0
        end = len(self._buf) if n < 0 else self._pos + n
        out = self._buf[self._pos:end]  # an offset, not a re-slice: no quadratic copying of a big buffer
        self._pos += len(out)
        return out


class _GuardedGzip(io.RawIOBase):
    """Maps gzip failures to CorruptArchiveError naming truncation or a CRC error."""

    def __init__(self, raw: Readable, name: str) -> None:
        self._inner = igzip_threaded.open(raw, "rb", threads=1)  # type: ignore[no-untyped-call]
        self._name = name

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self._inner.read(n))
        except EOFError:
            raise CorruptArchiveError(
                f"{self._name}: gzip stream is truncated; fetch the archive again"
            ) from None
        except (gzip.BadGzipFile, zlib.error, _ISAL_ERROR, OSError) as exc:
            if isinstance(exc, gzip.BadGzipFile) and "CRC" in str(exc):
                raise CorruptArchiveError(
                    f"{self._name}: gzip CRC check failed (data corrupted in transit or at the "
                    "source); fetch the archive again"
                ) from None
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
                raise
            raise CorruptArchiveError(f"{self._name}: gzip data is corrupt ({exc})") from None

    def close(self) -> None:
        try:
            self._inner.close()
        except Exception:  # noqa: BLE001 - closing after a failure must not mask it
            pass
        super().close()


def open_decompressed(source: Readable, name: str) -> tuple[BinaryIO, Compression]:
    """A reader of the uncompressed tar bytes of ``source``, and the compression found."""
    peek = PeekReader(source)
    kind = sniff(peek.peek(512), name)
    if kind == "gzip":
        return _GuardedGzip(peek, name), kind  # type: ignore[return-value]
    if kind == "zstd":
        return _ZstdReader(peek, name), kind  # type: ignore[return-value]
    return peek, kind  # type: ignore[return-value]
