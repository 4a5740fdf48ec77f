"""Byte-level framing of a bundle: one zstd frame, an end trailer, optional numbered parts.

The payload is the zstd frame of the tar stream followed by a 24-byte zstd *skippable frame*
(``zstd -d`` and ``tar -I zstd`` ignore it) that records the length of the main frame, so a
file cut anywhere, even inside zstd's own epilogue, is detected.

``--split-size`` cuts the payload into ``FILE.part001``, ``FILE.part002``, ... each starting
with a 128-byte text header (``head -c 128 FILE.part001``)::

    cachemgr-bundle-part v1 000002 of 000005 id <32 hex> payload 00000000004294967168

The count is filled in when the export finishes, so a missing last part is detected too;
the id ties the parts of one export together. To rebuild the plain ``.tar.zst`` by hand:
``for p in FILE.part*; do tail -c +129 "$p"; done > FILE``.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from cachemgr.errors import BundleError, MissingPartError, NotABundleError, StoreError, TruncatedBundleError, UsageError
from cachemgr.store.fs import disk_error, remove_quietly, unique_name

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC = struct.pack("<I", 0x184D2A5B)
_TRAILER_TAG = b"CMGREND1"
TRAILER_SIZE = 24
PART_HEADER_SIZE = 128
_PART_PREFIX = b"cachemgr-bundle-part "
_PART_RE = re.compile(r"^(?P<base>.+)\.part(?P<n>[0-9]{3,})$")
MIN_SPLIT = 4096


def trailer(main_length: int) -> bytes:
    return _SKIPPABLE_MAGIC + struct.pack("<I", 16) + _TRAILER_TAG + struct.pack("<Q", main_length)


def parse_trailer(data: bytes) -> int | None:
    """The main frame length recorded in a trailer, or None if ``data`` is not one."""
    if len(data) != TRAILER_SIZE or data[:8] != _SKIPPABLE_MAGIC + struct.pack("<I", 16):
        return None
    if data[8:16] != _TRAILER_TAG:
        return None
    value: int = struct.unpack("<Q", data[16:])[0]
    return value


def part_name(base: Path, index: int) -> Path:
    return base.with_name(f"{base.name}.part{index:03d}")


def _part_header(index: int, count: int, bundle_id: str, payload: int) -> bytes:
    text = f"cachemgr-bundle-part v1 {index:06d} of {count:06d} id {bundle_id} payload {payload:020d}"
    return text.ljust(PART_HEADER_SIZE - 1).encode() + b"\n"


# -- writing ---------------------------------------------------------------------------
class Sink:
    """Where the compressed payload goes: one file, or numbered parts. Temp names until ``commit``."""

    def __init__(self, dest: Path, split_size: int | None) -> None:
        if split_size is not None and split_size < MIN_SPLIT:
            raise UsageError(f"--split-size {split_size} is too small; use at least {MIN_SPLIT // 1024}K")
        self.dest = dest
        self.split = split_size - PART_HEADER_SIZE if split_size else None
        self.bundle_id = uuid.uuid4().hex
        self.total = 0
        self._files: list[tuple[Path, int]] = []  # (temp path, fd)
        self._sizes: list[int] = []
        self._open_next()

    def _open_next(self) -> None:
        tmp = self.dest.with_name(f".{self.dest.name}.{unique_name('part')}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise disk_error(exc, self.dest) from None
        self._files.append((tmp, fd))
        self._sizes.append(0)
        if self.split is not None:
            self._write(fd, _part_header(len(self._files), 0, self.bundle_id, 0))

    def _write(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise disk_error(exc, self.dest) from None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        written = len(view)
        while view:
            room = len(view) if self.split is None else self.split - self._sizes[-1]
            if room == 0:
                self._open_next()
                continue
            piece = view[:room]
            self._write(self._files[-1][1], piece)
            self._sizes[-1] += len(piece)
            self.total += len(piece)
            view = view[room:]
        return written

    def flush(self) -> None:
        pass

    def outputs(self) -> list[Path]:
        if self.split is None:
            return [self.dest]
        return [part_name(self.dest, i + 1) for i in range(len(self._files))]

    def commit(self) -> list[Path]:
        """Fill in the part headers, fsync, and rename every temp to its final name."""
        outputs = self.outputs()
        count = len(self._files)
        try:
            for i, (_tmp, fd) in enumerate(self._files):
                if self.split is not None:
                    os.pwrite(fd, _part_header(i + 1, count, self.bundle_id, self._sizes[i]), 0)
                os.fsync(fd)
            for (tmp, _fd), final in zip(self._files, outputs, strict=True):
                os.replace(tmp, final)
        except OSError as exc:
            raise disk_error(exc, self.dest) from None
        finally:
            self.abort()
        return outputs

    def abort(self) -> None:
        for tmp, fd in self._files:
            try:
                os.close(fd)
            except OSError:
                pass
            remove_quietly(tmp)
        self._files = []


# -- reading ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class PartHeader:
    index: int
    count: int
    bundle_id: str
    payload: int


def read_part_header(path: Path) -> PartHeader | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(PART_HEADER_SIZE)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(_PART_PREFIX):
        return None
    words = head.decode("ascii", "replace").split()
    try:
        if len(head) != PART_HEADER_SIZE or words[1] != "v1" or words[3] != "of":
            raise ValueError(head)
        return PartHeader(int(words[2]), int(words[4]), words[6], int(words[8]))
    except (ValueError, IndexError):
        raise BundleError(f"{path}: damaged part header; copy the part again") from None


def _sniff(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist; give the bundle file or its parts") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    if magic != ZSTD_MAGIC:
        raise NotABundleError(f"{path} is not a cachemgr bundle (not zstd-compressed); give a file "
                              "written by cachemgr export")


def collect_segments(paths: list[Path]) -> tuple[list[Segment], str]:
    """The payload segments of one bundle given as a file, all parts, or any one part."""
    if not paths:
        raise BundleError("no bundle given; name the bundle file or its parts")
    headers = {p: read_part_header(p) for p in paths} if all(p.exists() for p in paths) else {}
    if len(paths) == 1 and headers.get(paths[0]) is None:
        _sniff(paths[0])
        size = paths[0].stat().st_size
        return [Segment(paths[0], 0, size)], str(paths[0])
    for p in paths:
        if not p.exists():
            raise MissingPartError(f"{p} does not exist; copy it next to the other parts")
        if headers[p] is None:
            raise BundleError(f"{p} is not a part of a split bundle; give either one bundle file or its parts")
    first = min(paths, key=lambda p: headers[p].index)  # type: ignore[union-attr]
    ref = headers[first]
    assert ref is not None
    found: dict[int, Path] = {}
    for p in paths:
        h = headers[p]
        assert h is not None
        if h.bundle_id != ref.bundle_id:
            raise BundleError(f"{p} belongs to another export than {first}; give parts of one bundle")
        found[h.index] = p
    match = _PART_RE.match(first.name)
    if match:  # also pick up siblings: FILE.part001 given alone finds FILE.part002...
        for sibling in sorted(first.parent.glob(match.group("base") + ".part*")):
            h = read_part_header(sibling) if _PART_RE.match(sibling.name) else None
            if h is not None and h.bundle_id == ref.bundle_id:
                found.setdefault(h.index, sibling)
    base = first.with_name(match.group("base")) if match else first
    missing = [i for i in range(1, ref.count + 1) if i not in found]
    if ref.count == 0:
        raise TruncatedBundleError(f"{first}: the export that wrote it did not finish; export again")
    if missing:
        names = ", ".join(str(part_name(base, i)) for i in missing)
        raise MissingPartError(f"bundle {base} has {ref.count} parts but {names} "
                               f"{'is' if len(missing) == 1 else 'are'} missing; copy "
                               f"{'it' if len(missing) == 1 else 'them'} next to the others")
    segments = []
    for i in range(1, ref.count + 1):
        p = found[i]
        h = read_part_header(p)
        assert h is not None
        size = p.stat().st_size - PART_HEADER_SIZE
        if size != h.payload:
            raise TruncatedBundleError(f"{p} is truncated ({size} of {h.payload} bytes); copy it again")
        segments.append(Segment(p, PART_HEADER_SIZE, size))
    _sniff_segment(segments[0], str(base))
    return segments, str(base)


def _sniff_segment(seg: Segment, where: str) -> None:
    with open(seg.path, "rb") as fh:
        fh.seek(seg.offset)
        if fh.read(4) != ZSTD_MAGIC:
            raise NotABundleError(f"{where} is not a cachemgr bundle (not zstd-compressed)")


class PayloadReader:
    """Reads the first ``limit`` payload bytes across segments (a file-like ``read``)."""

    def __init__(self, segments: list[Segment], limit: int) -> None:
        self._segments = list(segments)
        self._left = limit
        self._fh: object | None = None
        self._seg_left = 0
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        while self._left > 0:
            if self._seg_left == 0:
                if not self._segments:
                    return b""
                seg = self._segments.pop(0)
                self._close()
                fd = os.open(seg.path, os.O_RDONLY)
                os.lseek(fd, seg.offset, os.SEEK_SET)
                self._fh = fd
                self._seg_left = seg.length
                continue
            want = min(n if n > 0 else 1 << 20, self._seg_left, self._left)
            assert isinstance(self._fh, int)
            data = os.read(self._fh, want)
            if not data:
                self._seg_left = 0
                continue
            self._seg_left -= len(data)
            self._left -= len(data)
            self.done += len(data)
            return data
        self._close()
        return b""

    def _close(self) -> None:
        if isinstance(self._fh, int):
            os.close(self._fh)
        self._fh = None


def read_tail(segments: list[Segment], n: int) -> bytes:
    """The last ``n`` payload bytes (they may straddle parts)."""
    out = b""
    for seg in reversed(segments):
        take = min(n - len(out), seg.length)
        with open(seg.path, "rb") as fh:
            fh.seek(seg.offset + seg.length - take)
            out = fh.read(take) + out
        if len(out) >= n:
            break
    return out
