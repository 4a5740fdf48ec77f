"""Serving a stored model as the tar stream tensorflow_hub expects (plain or gzip)."""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator

from cachemgr.errors import StoreError
from cachemgr.store.fs import open_no_follow
from cachemgr.store.manifest import Manifest
from cachemgr.store.objects import Store

CHUNK = 1 << 20


def tar_chunks(store: Store, digest: str, manifest: Manifest) -> Iterator[bytes]:
    """An uncompressed POSIX tar of the snapshot ``digest`` in ``store``, rooted at the SavedModel root.

    Files are opened without following links (open_no_follow), and each must have the
    manifest's size: the stream never carries bytes from outside the store."""
    for d in manifest.dirs:
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        yield info.tobuf(tarfile.PAX_FORMAT)
    for f in manifest.files:
        info = tarfile.TarInfo(f.path)
        info.size = f.size
        info.mode = 0o644
        yield info.tobuf(tarfile.PAX_FORMAT)
        path = store.snapshot_path(digest) / f.path
        with os.fdopen(open_no_follow(store.home, path), "rb") as fh:
            if os.fstat(fh.fileno()).st_size != f.size:
                raise StoreError(f"{path} is not {f.size} bytes as its manifest says; run cachemgr verify")
            left = f.size
            while left and (chunk := fh.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        if f.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - f.size % tarfile.BLOCKSIZE)
    yield b"\0" * (tarfile.BLOCKSIZE * 2)


def gzip_chunks(chunks: Iterator[bytes], level: int = 1) -> Iterator[bytes]:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


def tar_size(manifest: Manifest) -> int:
    """Exact length of ``tar_chunks`` (lets the response carry Content-Length)."""
    total = 0
    for d in manifest.dirs:
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        total += len(info.tobuf(tarfile.PAX_FORMAT))
    for f in manifest.files:
        info = tarfile.TarInfo(f.path)
        info.size = f.size
        info.mode = 0o644
        total += len(info.tobuf(tarfile.PAX_FORMAT)) + f.size
        total += (-f.size) % tarfile.BLOCKSIZE
    return total + tarfile.BLOCKSIZE * 2
