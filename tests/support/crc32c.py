"""CRC-32C (Castagnoli), as used by Google Cloud Storage's ``x-goog-hash: crc32c=``.

Uses ``google_crc32c`` or ``crc32c`` when importable, else a table-driven pure-Python
implementation (a few MB/s: fine for test archives; ``origin.FakeOrigin`` skips crc32c for
big archives when only the pure-Python version is available).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

_POLY = 0x82F63B78  # reversed Castagnoli polynomial


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c_py(data: bytes, crc: int = 0) -> int:
    """Pure-Python CRC-32C of ``data``, continuing from ``crc``."""
    table = _TABLE
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _native() -> Callable[[bytes, int], int] | None:
    try:
        import google_crc32c  # type: ignore[import-not-found,unused-ignore]

        def g(data: bytes, crc: int = 0) -> int:
            return int(google_crc32c.extend(crc, data))

        return g
    except ImportError:
        pass
    try:
        import crc32c as _c  # type: ignore[import-not-found,unused-ignore]

        def c(data: bytes, crc: int = 0) -> int:
            return int(_c.crc32c(data, crc))

        return c
    except ImportError:
        return None


_NATIVE = _native()
HAVE_NATIVE = _NATIVE is not None


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (native when available), continuing from ``crc``."""
    if _NATIVE is not None:
        return _NATIVE(data, crc)
    return crc32c_py(data, crc)


def crc32c_b64(data: bytes) -> str:
    """Base64 of the big-endian CRC-32C, the form GCS puts in ``x-goog-hash``."""
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode("ascii")
