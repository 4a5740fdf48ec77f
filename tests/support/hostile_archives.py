"""Archives crafted to exhaust memory: huge PAX / GNU long-name headers, header floods, zstd bombs.

A tar stream is written block by block (``header``, ``Zeros``) and compressed as a chain of
zstd frames, so gigabytes of claimed data cost a few hundred KiB on disk and almost nothing
to build: a run of zeros is one precomputed frame of ``ZERO_FRAME`` bytes, repeated.
"""

from __future__ import annotations

import functools
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

import zstandard

from .archives import PLACEHOLDER_PB

BLOCK = 512
ZERO_FRAME = 64 * 1024 * 1024
GIB = 1024**3


@dataclass(frozen=True)
class Zeros:
    """``n`` zero bytes of tar data (``n`` a multiple of 512)."""

    n: int


@functools.cache
def _zero_frame(n: int) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(b"\0" * n)


def zstd_chain(parts: Iterable[bytes | Zeros]) -> bytes:
    """The parts as one tar stream, compressed as consecutive zstd frames."""
    out = io.BytesIO()
    comp = zstandard.ZstdCompressor(level=1)
    for part in parts:
        if isinstance(part, bytes):
            out.write(comp.compress(part))
            continue
        left = part.n
        while left >= ZERO_FRAME:
            out.write(_zero_frame(ZERO_FRAME))
            left -= ZERO_FRAME
        if left:
            out.write(_zero_frame(left))
    return out.getvalue()


def header(name: str, kind: bytes, size: int) -> bytes:
    """One 512-byte tar header block claiming ``size`` bytes of data of type ``kind``."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o644
    info.mtime = 1_700_000_000
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _pad(n: int) -> int:
    return n + (-n % BLOCK)


def _model_tail() -> list[bytes | Zeros]:
    """A member for the headers to apply to, then the end of the archive."""
    return [header("saved_model.pb", tarfile.REGTYPE, len(PLACEHOLDER_PB)),
            PLACEHOLDER_PB + b"\0" * (-len(PLACEHOLDER_PB) % BLOCK), b"\0" * (2 * BLOCK)]


def huge_extended_header(kind: bytes, size: int = 3 * GIB // 2) -> bytes:
    """A PAX (``x``/``g``) or GNU long-name (``L``/``K``) header whose data really is ``size`` bytes."""
    return zstd_chain([header("././@LongLink" if kind in (b"L", b"K") else "pax", kind, size),
                       Zeros(_pad(size)), *_model_tail()])


def global_header_flood(each: int, count: int) -> bytes:
    """``count`` global PAX headers of ``each`` bytes (each under the per-header cap), one per member."""
    record = _pax_record("comment", each)
    parts: list[bytes | Zeros] = []
    for _ in range(count):
        parts += [header("pax_global_header", tarfile.XGLTYPE, len(record)), record + b"\0" * (-len(record) % BLOCK),
                  header("assets", tarfile.DIRTYPE, 0)]
    return zstd_chain([*parts, *_model_tail()])


def extended_header_chain(count: int) -> bytes:
    """``count`` small PAX headers in a row before one member."""
    record = _pax_record("comment", 64)
    parts: list[bytes | Zeros] = []
    for i in range(count):
        parts += [header(f"pax{i}", tarfile.XHDTYPE, len(record)), record + b"\0" * (-len(record) % BLOCK)]
    return zstd_chain([*parts, *_model_tail()])


def sparse_member() -> bytes:
    """A GNU sparse member (type ``S``), whose extension blocks tarfile collects without bound."""
    block = bytearray(header("saved_model.pb", tarfile.GNUTYPE_SPARSE, BLOCK))
    block[482] = 1  # isextended: another block of sparse records follows
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)  # recompute the checksum
    ext = b"\0" * 504 + b"\0" * 8  # the extension block: no records, not extended further
    return zstd_chain([bytes(block), ext, b"\0" * BLOCK, b"\0" * (2 * BLOCK)])


def zero_bomb(size: int) -> bytes:
    """A ``saved_model.pb`` member of ``size`` zero bytes (a few KiB per GiB compressed)."""
    return zstd_chain([header("saved_model.pb", tarfile.REGTYPE, size), Zeros(_pad(size)), b"\0" * (2 * BLOCK)])


def pax_record(key: str, value: str) -> bytes:
    """One PAX record ``"<len> key=value\\n"``, its length counting itself."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _pax_record(key: str, total: int) -> bytes:
    """One PAX record ``"<len> key=value\\n"`` of exactly ``total`` bytes."""
    body = f" {key}="
    for digits in range(1, 12):
        value_len = total - digits - len(body) - 1
        record = f"{total}{body}{'x' * value_len}\n"
        if len(str(total)) == digits and len(record) == total:
            return record.encode()
    raise ValueError(total)
