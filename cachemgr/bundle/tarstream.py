"""The few tar records a bundle is made of, written by hand and read strictly.

A bundle's tar holds only regular files (``manifest.json``, ``manifest.json.sig``,
``blobs/<sha256>``), so writing is a 512-byte GNU header per member, the data, zero padding,
and the end-of-archive blocks; any standard tar can list and extract it. The reader accepts
exactly that: any other member type, a bad header checksum, a short member or data after the
end marker is refused.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cachemgr.errors import BundleError, TruncatedBundleError

BLOCK = 512
RECORD = 20 * BLOCK
_MAX_TRAILING = 1 << 20


def member_header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = int(mtime)
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def end_of_archive(offset: int) -> bytes:
    """Two zero blocks, then zeros up to the next full record (as GNU tar writes)."""
    end = offset + 2 * BLOCK
    return b"\0" * (end - offset + (-end % RECORD))


@dataclass(frozen=True)
class Member:
    name: str
    size: int


class TarReader:
    """Strict sequential reader over a byte-chunk source (``read()`` -> b"" at the end)."""

    def __init__(self, read: Callable[[], bytes], where: str) -> None:
        self._read = read
        self.where = where
        self._buf = b""
        self._pos = 0
        self.offset = 0  # bytes of tar consumed

    def _fill(self) -> bool:
        chunk = self._read()
        if not chunk:
            return False
        self._buf = self._buf[self._pos:] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0
        return True

    def _take(self, n: int, what: str) -> bytes:
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise self.truncated(what)
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        self.offset += n
        return out

    def truncated(self, what: str) -> TruncatedBundleError:
        return TruncatedBundleError(f"{self.where} is truncated (it ends inside {what}); "
                                    "copy the whole file again")

    def next(self) -> Member | None:
        """The next member's header, or None after a clean end-of-archive."""
        block = self._take(BLOCK, "a tar header")
        if block == b"\0" * BLOCK:
            self._finish_end()
            return None
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except tarfile.HeaderError as exc:
            raise BundleError(f"{self.where}: bad tar header at byte {self.offset - BLOCK} ({exc}); "
                              "the bundle is damaged; copy or export it again") from None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise BundleError(f"{self.where}: unexpected member {info.name!r} (tar type {info.type!r}); "
                              "a cachemgr bundle holds only regular files; refused")
        return Member(info.name, info.size)

    def data(self, member: Member, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The member's bytes in chunks (views into the buffer are copied once at most)."""
        left = member.size
        while left:
            if self._pos >= len(self._buf) and not self._fill():
                raise self.truncated(f"member {member.name}")
            n = min(left, len(self._buf) - self._pos, chunk)
            piece = self._buf[self._pos:self._pos + n]
            self._pos += n
            self.offset += n
            left -= n
            yield piece
        self._take(-member.size % BLOCK, f"member {member.name}")

    def read_member(self, member: Member, limit: int) -> bytes:
        if member.size > limit:
            raise BundleError(f"{self.where}: member {member.name} is {member.size} bytes, over the "
                              f"{limit}-byte limit; refused")
        return b"".join(self.data(member))

    def _finish_end(self) -> None:
        if self._take(BLOCK, "the end-of-archive marker") != b"\0" * BLOCK:
            raise BundleError(f"{self.where}: a member follows a zero tar block; the bundle is damaged")
        trailing = 0
        while True:
            rest = self._buf[self._pos:]
            self._pos = len(self._buf)
            trailing += len(rest)
            if rest.count(0) != len(rest) or trailing > _MAX_TRAILING:
                raise BundleError(f"{self.where}: extra data after the end of the archive; the bundle "
                                  "was tampered with; export it again")
            if not self._fill():
                return
