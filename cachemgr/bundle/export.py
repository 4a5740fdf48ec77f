"""Writing a bundle: manifest, optional signature, each packed blob once, in one zstd stream.

Streams straight from the store's blobs into the output file (or numbered parts) through a
multi-threaded zstd compressor with a fixed-size read buffer: no temporary copy of the
bundle and memory that does not grow with its size. Outputs keep temp names until the
whole bundle is written, so an interrupted export leaves no half file under FILE.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import zstandard

from cachemgr import __version__, signing
from cachemgr.bundle.container import Sink, trailer
from cachemgr.bundle.format import MANIFEST_MEMBER, SIGNATURE_MEMBER, BundleManifest, Inventory
from cachemgr.bundle.plan import plan_blobs
from cachemgr.bundle.tarstream import end_of_archive, member_header, padding
from cachemgr.errors import StoreError, UsageError
from cachemgr.progress import Bar
from cachemgr.store.objects import Store
from cachemgr.store.pins import Pin, read_pins
from cachemgr.store.refs import Ref, RefIndex

READ_SIZE = 4 << 20
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class ExportResult:
    outputs: list[Path]
    manifest: BundleManifest
    size: int  # bytes written, all parts together
    signer: str | None


def select_refs(store: Store, handles: Iterable[str], everything: bool, pinned: Iterable[Pin] = ()) -> list[Ref]:
    """The refs to export: named handles, every live pin's model, or everything."""
    index = RefIndex(store)
    if everything:
        refs = index.all()
        if not refs:
            raise UsageError(f"the store {store.home} holds no models; pull some first")
        return refs
    wanted = list(handles)
    for pin in pinned:
        if index.lookup(pin.asked) is None:
            raise UsageError(f"pinned model {pin.asked} is not in the store; `cachemgr pull {pin.asked}` first")
        wanted.append(pin.asked)
    chosen = {ref.handle: ref for ref in (index.require(h) for h in wanted)}
    if not chosen:
        raise UsageError("name the models to export (HANDLE...), or use --pinned or --all")
    return sorted(chosen.values(), key=lambda r: r.handle)


def live_pins(store: Store, now: float | None = None) -> list[Pin]:
    moment = time.time() if now is None else now
    return [p for p in read_pins(store) if not p.expired(moment)]


def build_manifest(store: Store, refs: list[Ref], have: Inventory | None, now: float | None = None,
                   pins: Iterable[Pin] | None = None) -> BundleManifest:
    manifests = {ref.manifest: store.read_manifest(ref.manifest) for ref in refs}
    base = None
    if have is not None:
        base = {"inventory_created": have.created, "blobs_held": len(have.blobs)}
    return BundleManifest(
        created=time.time() if now is None else now,
        tool=f"cachemgr {__version__}",
        refs=tuple(refs),
        manifests=manifests,
        blobs=plan_blobs(refs, manifests, have),
        pins=None if pins is None else [p.to_json() for p in pins],
        base=base,
    )


class _TarOut:
    """Counts tar bytes on their way into the compressor."""

    def __init__(self, writer: zstandard.ZstdCompressionWriter) -> None:
        self.writer = writer
        self.offset = 0

    def put(self, data: bytes | memoryview) -> None:
        self.writer.write(data)
        self.offset += len(data)

    def member(self, name: str, body: bytes, mtime: float) -> None:
        self.put(member_header(name, len(body), mtime))
        self.put(body)
        self.put(padding(len(body)))


def write_bundle(store: Store, bundle: BundleManifest, dest: Path, *, split_size: int | None = None,
                 sign_key: Path | None = None, bar: Bar | None = None) -> ExportResult:
    key = signing.load_private_key(sign_key) if sign_key is not None else None
    body = bundle.to_bytes()
    signature = signing.sign(body, key) if key is not None else None
    missing = [b.sha256 for b in bundle.packed if not store.has_blob(b.sha256)]
    if missing:
        raise StoreError(f"blob {missing[0]} ({len(missing)} in all) is missing from {store.blobs}; "
                         "run cachemgr verify --repair or pull the model again")
    sink = Sink(dest, split_size)
    try:
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
        writer = cctx.stream_writer(cast(IO[bytes], sink), closefd=False, write_size=1 << 20)
        out = _TarOut(writer)
        out.member(MANIFEST_MEMBER, body, bundle.created)
        if signature is not None:
            out.member(SIGNATURE_MEMBER, signature, bundle.created)
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        total = bundle.packed_bytes
        done = 0
        for entry in bundle.packed:
            out.put(member_header(entry.member, entry.size, bundle.created))
            done += _copy_blob(store, entry.sha256, entry.size, out, view)
            out.put(padding(entry.size))
            if bar is not None:
                bar.update_to(done, total)
        out.put(end_of_archive(out.offset))
        writer.flush(zstandard.FLUSH_FRAME)
        sink.write(trailer(sink.total))
        outputs = sink.commit()
    except BaseException:
        sink.abort()
        raise
    signer = signing.public_line_of(key) if key is not None else None
    return ExportResult(outputs, bundle, sum(p.stat().st_size for p in outputs), signer)


def _copy_blob(store: Store, digest: str, size: int, out: _TarOut, view: memoryview) -> int:
    path = store.blob_path(digest)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"cannot read blob {path}: {exc.strerror}; run cachemgr verify --repair") from None
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise StoreError(f"blob {path} is {actual} bytes, its manifest says {size}; the store is damaged; "
                             "run cachemgr verify --repair")
        left = size
        while left:
            n = os.readv(fd, [view[:min(left, len(view))]])
            if n == 0:
                raise StoreError(f"blob {path} shrank while it was being exported; export again")
            out.put(view[:n])
            left -= n
    finally:
        os.close(fd)
    return size
