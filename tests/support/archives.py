"""TF Hub style model archives: valid ones and hostile/broken ones.

TF Hub serves a model as a tar stream (gzip-compressed, ``.tar.gz``) whose root *is* the
SavedModel root (``saved_model.pb``, ``variables/...``, ``assets/...``), often with members
spelled ``./saved_model.pb`` and a ``./`` directory entry. Everything here is deterministic:
fixed mtimes, uid/gid 0, gzip header mtime 0, sorted members.

Hostile builders return ``bytes`` (gzip-compressed unless stated). Those taking an optional
``model_dir`` add their bad member to the real model's members when one is given; without it
they carry a placeholder ``saved_model.pb`` (not a parseable SavedModel).
"""

from __future__ import annotations

import functools
import gzip
import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

Compression = Literal["gz", "zst", "none"]

MTIME = 1_700_000_000
PLACEHOLDER_PB = b"\x08\x01placeholder saved_model.pb (not a real SavedModel)\n"

HTML_ERROR_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    b"<title>Error 404 (Not Found)!!1</title></head>\n<body><p><b>404.</b> "
    b"<ins>That\xe2\x80\x99s an error.</ins></p><p>The requested URL was not found on this "
    b"server. <ins>That\xe2\x80\x99s all we know.</ins></p></body></html>\n"
)


@dataclass(frozen=True)
class Member:
    """One tar member to write. ``data`` is used for regular files only."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int | None = None
    devmajor: int = 0
    devminor: int = 0


def _tarinfo(m: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(m.name)
    info.type = m.type
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if m.type == tarfile.DIRTYPE:
        info.mode = 0o755 if m.mode is None else m.mode
    else:
        info.mode = 0o644 if m.mode is None else m.mode
    if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(m.data)
    info.linkname = m.linkname
    info.devmajor = m.devmajor
    info.devminor = m.devminor
    return info


def _write_tar(out: BinaryIO, members: Iterable[Member]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = _tarinfo(m)
            if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)


def compress(data: bytes, compression: Compression = "gz") -> bytes:
    """Compress a raw tar stream like TF Hub does (gzip with header mtime 0), or zstd."""
    if compression == "gz":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zst":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def tar_bytes(members: Iterable[Member], compression: Compression = "gz") -> bytes:
    """Build a (compressed) PAX tar from ``members`` in memory."""
    buf = io.BytesIO()
    _write_tar(buf, members)
    return compress(buf.getvalue(), compression)


def _walk(model_dir: Path) -> Iterator[Path]:
    """Yield every path below ``model_dir``, directories before their contents, sorted."""
    for child in sorted(model_dir.iterdir(), key=lambda p: p.name):
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from _walk(child)


def _tar_model_dir(
    model_dir: Path, tar: tarfile.TarFile, dot_prefix: bool, skip: frozenset[str] = frozenset()
) -> None:
    model_dir = Path(model_dir)
    if dot_prefix:
        tar.addfile(_tarinfo(Member("./", tarfile.DIRTYPE)))
    for p in _walk(model_dir):
        rel = p.relative_to(model_dir).as_posix()
        if rel in skip:
            continue
        name = f"./{rel}" if dot_prefix else rel
        if p.is_dir():
            tar.addfile(_tarinfo(Member(name, tarfile.DIRTYPE)))
            continue
        info = _tarinfo(Member(name))
        info.size = p.stat().st_size
        with p.open("rb") as f:
            tar.addfile(info, f)


def model_members(model_dir: Path, *, skip: Iterable[str] = ()) -> list[Member]:
    """The members (relative names, no ``./``) of ``model_dir`` as in-memory ``Member``s."""
    model_dir = Path(model_dir)
    skipped = set(skip)
    out: list[Member] = []
    for p in _walk(model_dir):
        rel = p.relative_to(model_dir).as_posix()
        if rel in skipped:
            continue
        if p.is_dir():
            out.append(Member(rel, tarfile.DIRTYPE))
        else:
            out.append(Member(rel, data=p.read_bytes()))
    return out


class _Closer:
    """Finish a compressor stream without closing the underlying file."""

    def __init__(self, compression: Compression, raw: BinaryIO) -> None:
        self.stream: BinaryIO
        self._finish: list[object] = []
        if compression == "gz":
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
            self.stream = gz  # type: ignore[assignment]
        elif compression == "zst":
            import zstandard

            w = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
            self.stream = w  # type: ignore[assignment,unused-ignore]
        elif compression == "none":
            self.stream = raw
        else:
            raise ValueError(f"unknown compression {compression!r}")
        self._compression = compression

    def close(self) -> None:
        if self._compression != "none":
            self.stream.close()


def write_archive(
    model_dir: Path,
    out: BinaryIO,
    compression: Compression = "gz",
    dot_prefix: bool = False,
    skip: Iterable[str] = (),
) -> None:
    """Stream the archive of ``model_dir`` into the binary file ``out`` (left open)."""
    closer = _Closer(compression, out)
    with tarfile.open(fileobj=closer.stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _tar_model_dir(Path(model_dir), tar, dot_prefix, frozenset(skip))
    closer.close()


def make_archive(
    model_dir: Path, dest: Path, compression: Compression = "gz", dot_prefix: bool = False
) -> Path:
    """Write the TF Hub archive of the SavedModel in ``model_dir`` to ``dest``; return ``dest``.

    The archive root is the SavedModel root. With ``dot_prefix`` the first member is a ``./``
    directory entry and names read ``./saved_model.pb``, ``./variables/`` and so on
    (as ``tar -C model_dir -czf dest .`` would produce). Streams, so big models are fine.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f:
        write_archive(Path(model_dir), f, compression, dot_prefix)
    return dest


def archive_bytes(
    model_dir: Path, compression: Compression = "gz", dot_prefix: bool = False
) -> bytes:
    """Like ``make_archive`` but returns the archive as bytes."""
    buf = io.BytesIO()
    write_archive(Path(model_dir), buf, compression, dot_prefix)
    return buf.getvalue()


def decompress(data: bytes) -> bytes:
    """Undo ``compress`` (gzip or zstd detected by magic; anything else returned as is)."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def archive_members(data: bytes) -> dict[str, bytes | None]:
    """Map member name -> file bytes (``None`` for non-regular members) of an archive."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(decompress(data)), mode="r:") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info) if info.isreg() else None
            out[info.name] = f.read() if f is not None else None
    return out


# --------------------------------------------------------------------------- hostile archives


def _base(model_dir: Path | None) -> list[Member]:
    if model_dir is not None:
        return model_members(Path(model_dir))
    return [
        Member("saved_model.pb", data=PLACEHOLDER_PB),
        Member("variables", tarfile.DIRTYPE),
    ]


def _hostile(model_dir: Path | None, *extra: Member) -> bytes:
    """``_base(model_dir)`` plus ``extra`` (directories already present are not repeated)."""
    members = _base(model_dir)
    names = {m.name for m in members}
    members += [m for m in extra if not (m.type == tarfile.DIRTYPE and m.name in names)]
    return tar_bytes(members)


def hostile_absolute_path(
    model_dir: Path | None = None, name: str = "/tmp/cachemgr-escape.txt"
) -> bytes:
    """A member with an absolute path (``/tmp/cachemgr-escape.txt``)."""
    return _hostile(model_dir, Member(name, data=b"escaped via absolute path\n"))


def hostile_dotdot(
    model_dir: Path | None = None, name: str = "variables/../../cachemgr-escape.txt"
) -> bytes:
    """A member whose name climbs out with ``..``."""
    return _hostile(model_dir, Member(name, data=b"escaped via ..\n"))


def hostile_symlink(
    model_dir: Path | None = None, name: str = "assets/link", target: str = "/etc/passwd"
) -> bytes:
    """A symlink member (``assets/link -> /etc/passwd``)."""
    return _hostile(
        model_dir, Member("assets", tarfile.DIRTYPE), Member(name, tarfile.SYMTYPE, linkname=target)
    )


def hostile_hardlink(
    model_dir: Path | None = None, name: str = "assets/hard", target: str = "/etc/passwd"
) -> bytes:
    """A hard-link member (``assets/hard`` linking ``/etc/passwd``)."""
    return _hostile(
        model_dir, Member("assets", tarfile.DIRTYPE), Member(name, tarfile.LNKTYPE, linkname=target)
    )


def hostile_chardev(model_dir: Path | None = None, name: str = "assets/null") -> bytes:
    """A character-device member (1:3, i.e. /dev/null)."""
    return _hostile(
        model_dir,
        Member("assets", tarfile.DIRTYPE),
        Member(name, tarfile.CHRTYPE, devmajor=1, devminor=3),
    )


def hostile_fifo(model_dir: Path | None = None, name: str = "assets/fifo") -> bytes:
    """A FIFO member."""
    return _hostile(model_dir, Member("assets", tarfile.DIRTYPE), Member(name, tarfile.FIFOTYPE))


@functools.lru_cache(maxsize=4)
def bomb_archive(size: int = 50 * 1024 * 1024, compression: Compression = "gz") -> bytes:
    """A placeholder model plus one ``size``-byte file of zeros (50 MB -> ~50 KB gzip)."""
    buf = io.BytesIO()
    closer = _Closer(compression, buf)
    with tarfile.open(fileobj=closer.stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for m in _base(None):
            info = _tarinfo(m)
            tar.addfile(info, io.BytesIO(m.data) if m.type == tarfile.REGTYPE else None)
        info = _tarinfo(Member("variables/variables.data-00000-of-00001"))
        info.size = size
        tar.addfile(info, _Zeros(size))
    closer.close()
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._left)
        b[:n] = bytes(n)
        self._left -= n
        return n


@functools.lru_cache(maxsize=4)
def many_entries_archive(n: int = 10_000, compression: Compression = "gz") -> bytes:
    """A placeholder model plus ``n`` tiny files ``assets/many/fNNNNN.txt``."""
    members = [
        *_base(None),
        Member("assets", tarfile.DIRTYPE),
        Member("assets/many", tarfile.DIRTYPE),
    ]
    members += [Member(f"assets/many/f{i:05d}.txt", data=b"%d\n" % i) for i in range(n)]
    return tar_bytes(members, compression)


def truncated_archive(valid: bytes, fraction: float = 0.5) -> bytes:
    """``valid`` cut at ``fraction`` of its length (a download that stopped mid-stream)."""
    return valid[: max(1, int(len(valid) * fraction))]


def corrupt_crc_archive(valid_gz: bytes) -> bytes:
    """A gzip stream whose CRC32 trailer (bytes -8..-4) is flipped; the tar inside is intact.

    Note: ``tarfile`` in stream mode stops at the end-of-archive blocks and may never read the
    gzip trailer; only a reader that drains the stream to EOF notices the bad CRC.
    """
    if valid_gz[:2] != b"\x1f\x8b":
        raise ValueError("corrupt_crc_archive needs a gzip stream")
    b = bytearray(valid_gz)
    for i in range(len(b) - 8, len(b) - 4):
        b[i] ^= 0xFF
    return bytes(b)


def html_error_page() -> bytes:
    """An HTML error page, as served with status 200 by misbehaving proxies/portals."""
    return HTML_ERROR_PAGE


def no_saved_model_archive(model_dir: Path | None = None) -> bytes:
    """A tar without ``saved_model.pb`` (the real model's other files, if given)."""
    if model_dir is not None:
        return tar_bytes(model_members(Path(model_dir), skip=["saved_model.pb"]))
    return tar_bytes(
        [
            Member("variables", tarfile.DIRTYPE),
            Member("assets", tarfile.DIRTYPE),
            Member("assets/readme.txt", data=b"no saved_model.pb here\n"),
        ]
    )


def missing_shard_archive(model_dir: Path) -> bytes:
    """The real model with ``variables/variables.index`` but without its data shard(s)."""
    model_dir = Path(model_dir)
    shards = sorted(
        p.relative_to(model_dir).as_posix()
        for p in (model_dir / "variables").glob("variables.data-*")
    )
    if not shards:
        raise ValueError(f"{model_dir} has no variables/variables.data-* shard")
    return tar_bytes(model_members(model_dir, skip=shards[:1]))


LONG_ASSET_NAME = (
    "assets/"
    + "a-rather-long-directory-name-for-pax-headers/" * 2
    + "extra-asset-"
    + "x" * 80
    + ".txt"
)


def long_names_archive(model_dir: Path, dot_prefix: bool = False) -> bytes:
    """The valid model plus ``LONG_ASSET_NAME`` (>100 chars, so PAX ``path`` headers)."""
    members = model_members(Path(model_dir))
    parts = LONG_ASSET_NAME.split("/")
    names = {m.name for m in members}
    for i in range(1, len(parts)):
        d = "/".join(parts[:i])
        if d not in names:
            members.append(Member(d, tarfile.DIRTYPE))
            names.add(d)
    members.append(Member(LONG_ASSET_NAME, data=b"long name asset\n"))
    if dot_prefix:
        members = [Member("./", tarfile.DIRTYPE)] + [
            Member("./" + m.name, m.type, m.data, m.linkname, m.mode) for m in members
        ]
    return tar_bytes(members)
