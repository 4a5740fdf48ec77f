"""Reading a bundle: stream, verify everything, then publish manifests, snapshots, refs, view.

Order of events, so that a failed or interrupted import leaves refs and view as they were:

1. the end trailer / part headers say the file is whole; the first member is the bundle
   manifest (format, internal consistency), the signature is checked against the trusted keys;
2. the plan says what is new; a delta whose base blobs are missing here is refused now;
3. every packed blob is hashed while it streams to a private temp; a verified new blob is
   adopted into blobs/ at once (harmless: nothing refers to it yet, prune collects it);
4. the end of the tar, no missing/extra member, the zstd checksum, every needed blob held;
5. only then: manifests, snapshots, refs and view links (``catalog.relink``).

A dry run (``import --dry-run``) does 1-4 reading only: every packed blob is hashed and
dropped, missing base blobs are reported instead of refused, and nothing in the store (which
need not exist) is created or changed.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, cast

import zstandard

from cachemgr import signing
from cachemgr.bundle.container import TRAILER_SIZE, PayloadReader, Segment, collect_segments, parse_trailer, read_tail
from cachemgr.bundle.format import (
    BLOB_PREFIX,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_MEMBER,
    BlobEntry,
    BundleManifest,
    Inventory,
)
from cachemgr.bundle.plan import ImportPlan, LocalState, missing_report, plan_import
from cachemgr.bundle.tarstream import Member, TarReader
from cachemgr.errors import (
    BundleError,
    BundleIntegrityError,
    MissingBaseError,
    NotABundleError,
    SignatureError,
    StoreError,
    TruncatedBundleError,
)
from cachemgr.ingest.publish import publishing, relink
from cachemgr.progress import Bar
from cachemgr.settings import Settings
from cachemgr.store.fs import disk_error, remove_quietly
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store
from cachemgr.store.pins import Pin, find_pin, write_pin
from cachemgr.store.refs import RefIndex

CHUNK = 1 << 20


@dataclass(frozen=True)
class ImportResult:
    where: str
    noop: bool
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    blobs_added: int
    bytes_added: int
    blobs_skipped: int
    signer: str | None
    trusted: bool
    pins_added: list[str] = field(default_factory=list)
    dry_run: bool = False
    missing: list[str] = field(default_factory=list)  # dry run: base blobs neither side has

    def to_json(self) -> dict[str, object]:
        return {
            "bundle": self.where, "dry_run": self.dry_run, "missing": self.missing,
            "noop": self.noop, "added": self.added, "updated": self.updated,
            "unchanged": self.unchanged, "blobs_added": self.blobs_added, "bytes_added": self.bytes_added,
            "blobs_skipped": self.blobs_skipped, "pins_added": self.pins_added,
            "signer": signing.fingerprint(self.signer) if self.signer else None, "trusted": self.trusted,
        }


class _Inflater:
    """Decompresses in its own thread into a bounded queue (overlaps with hashing/writing)."""

    def __init__(self, source: PayloadReader, where: str) -> None:
        self.where = where
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(8)
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name="inflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        item: bytes | BaseException
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], self._source), read_size=CHUNK,
                                                                read_across_frames=True)
            while not self._stop.is_set():
                item = reader.read(CHUNK)
                self._put(item)
                if not item:
                    return
        except zstandard.ZstdError as exc:
            item = BundleError(f"{self.where}: compressed data is corrupt ({exc}); the bundle was damaged "
                               "or tampered with; copy or export it again")
        except OSError as exc:
            item = StoreError(f"cannot read {self.where}: {exc.strerror}")
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            item = exc
        self._put(item)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self) -> bytes:
        item = self._q.get()
        if isinstance(item, BaseException):
            self._q.put(b"")
            raise item
        if not item:
            self._q.put(b"")  # stay at EOF for later reads
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def take_inventory(store: Store, now: float) -> Inventory:
    """What this store holds, for ``export --have`` on the connected side."""
    manifests = frozenset(p.name.removesuffix(".json") for p in store.manifests.glob("*.json"))
    return Inventory(now, manifests, frozenset(store.iter_blobs()))


def local_state(store: Store, bundle: BundleManifest) -> LocalState:
    index = RefIndex(store)
    refs = {r.handle: cur for r in bundle.refs if (cur := index.read(r.handle)) is not None}
    return LocalState(
        blobs=frozenset(b.sha256 for b in bundle.blobs if store.has_blob(b.sha256)),
        manifests=frozenset(d for d in bundle.manifests if store.manifest_path(d).is_file()),
        snapshots=frozenset(d for d in bundle.manifests if store.snapshot_path(d).is_dir()),
        refs=refs,
    )


def check_signature(body: bytes, signature: bytes | None, trusted: tuple[str, ...], where: str) -> str | None:
    """The signer's key line (None if unsigned); refuses what the trust policy does not allow."""
    if signature is None:
        if trusted:
            raise SignatureError(f"{where} is not signed, but a signature is required (--require-signature "
                                 "or trusted_keys); export it again with --sign KEY")
        return None
    signer = signing.verify(body, signature, where)
    if trusted and signer not in trusted:
        raise SignatureError(f"{where} is signed by {signing.fingerprint(signer)}, which is not a trusted key; "
                             "get a bundle signed by a trusted key or add its .pub with --require-signature")
    return signer


def import_bundle(store: Store, paths: list[Path], trusted: tuple[str, ...] = (),
                  bar: Bar | None = None, dry_run: bool = False, limits: Limits | None = None) -> ImportResult:
    """Import the bundle at ``paths``; its model manifests must meet ``limits`` (default: the default caps)."""
    limits = limits or Limits.of(Settings())
    segments, where = collect_segments(paths)
    total = sum(s.length for s in segments)
    main = parse_trailer(read_tail(segments, TRAILER_SIZE)) if total >= TRAILER_SIZE else None
    whole = main is not None and main == total - TRAILER_SIZE
    source = PayloadReader(segments, total - TRAILER_SIZE if whole else total)
    inflater = _Inflater(source, where)
    try:
        return _run(store, inflater, source, segments, where, whole, trusted, bar, dry_run, limits)
    finally:
        inflater.close()


def _run(store: Store, inflater: _Inflater, source: PayloadReader, segments: list[Segment], where: str,
         whole: bool, trusted: tuple[str, ...], bar: Bar | None, dry_run: bool = False,
         limits: Limits | None = None) -> ImportResult:
    tar = TarReader(inflater.read, where)
    try:
        first = tar.next()
    except TruncatedBundleError:
        raise TruncatedBundleError(f"{where} is truncated, or not a cachemgr bundle at all; copy the "
                                   "whole file again, or give a file written by cachemgr export") from None
    except BundleError:
        raise NotABundleError(f"{where} is not a cachemgr bundle (no tar stream inside); "
                              "give a file written by cachemgr export") from None
    if first is None or first.name != MANIFEST_MEMBER:
        raise NotABundleError(f"{where} is not a cachemgr bundle (it does not start with {MANIFEST_MEMBER}); "
                              "give a file written by cachemgr export")
    body = tar.read_member(first, MAX_MANIFEST_BYTES)
    bundle = BundleManifest.from_bytes(body, where, limits)  # the caps, before any blob streams
    if not whole:
        raise TruncatedBundleError(f"{where} is truncated or incomplete (its end marker is missing or wrong); "
                                   "copy the whole file again")
    member = tar.next()
    signature = None
    if member is not None and member.name == SIGNATURE_MEMBER:
        signature = tar.read_member(member, MAX_SIGNATURE_BYTES)
        member = tar.next()
    signer = check_signature(body, signature, trusted, where)

    plan = plan_import(bundle, local_state(store, bundle))
    if dry_run:
        return _dry_run(store, tar, member, bundle, plan, source, segments, where, whole, signer, trusted, bar,
                        [p.asked for p in map(Pin.from_json, bundle.pins or []) if find_pin(store, p.asked) is None])
    if plan.missing:
        raise MissingBaseError(missing_report(bundle, plan.missing, where))
    store.create()
    with store.in_flight():  # until the refs are written: a prune keeps what this import touches
        staging = store.new_temp("import")
        try:
            added = _receive(store, tar, member, bundle, plan, staging, where, bar)
        finally:
            remove_quietly(staging)
        _check_end(source, segments, whole, where)
        absent = [b.sha256 for b in bundle.blobs if not store.has_blob(b.sha256)]
        if absent:
            raise StoreError(f"blob {absent[0]} vanished from {store.blobs} during the import "
                             "(a concurrent prune?); import again")
        if not plan.noop:
            _publish(store, bundle, plan)
    pins_added = _import_pins(store, bundle)
    return ImportResult(
        where=where, noop=plan.noop, added=plan.by_status("added"), updated=plan.by_status("updated"),
        unchanged=plan.by_status("unchanged"), blobs_added=len(added), bytes_added=sum(added.values()),
        blobs_skipped=len(plan.verify_only), signer=signer, trusted=bool(trusted), pins_added=pins_added,
    )


def _check_end(source: PayloadReader, segments: list[Segment], whole: bool, where: str) -> None:
    if source.done != source_limit(segments, whole):
        raise BundleError(f"{where}: data after the end of the compressed stream; the bundle was "
                          "tampered with; export it again")


def _dry_run(store: Store, tar: TarReader, member: Member | None, bundle: BundleManifest, plan: ImportPlan,
             source: PayloadReader, segments: list[Segment], where: str, whole: bool, signer: str | None,
             trusted: tuple[str, ...], bar: Bar | None, pins: list[str]) -> ImportResult:
    """Verify every member as an import would, writing nothing; say what an import would do."""
    check_only = replace(plan, write=frozenset(), verify_only=plan.write | plan.verify_only)
    _receive(store, tar, member, bundle, check_only, Path(), where, bar)  # writes nothing: no staging needed
    _check_end(source, segments, whole, where)
    return ImportResult(
        where=where, noop=plan.noop, added=plan.by_status("added"), updated=plan.by_status("updated"),
        unchanged=plan.by_status("unchanged"), blobs_added=len(plan.write),
        bytes_added=sum(b.size for b in bundle.blobs if b.sha256 in plan.write),
        blobs_skipped=len(plan.verify_only), signer=signer, trusted=bool(trusted), pins_added=pins,
        dry_run=True, missing=[b.sha256 for b in plan.missing],
    )


def _import_pins(store: Store, bundle: BundleManifest) -> list[str]:
    """Pins carried by the bundle (export --with-pins) that this store does not have yet."""
    added = []
    for doc in bundle.pins or []:
        pin = Pin.from_json(doc)
        if find_pin(store, pin.asked) is None:
            write_pin(store, pin)
            added.append(pin.asked)
    return added


def source_limit(segments: list[Segment], whole: bool) -> int:
    total = sum(s.length for s in segments)
    return total - TRAILER_SIZE if whole else total


def _receive(store: Store, tar: TarReader, member: Member | None, bundle: BundleManifest,
             plan: ImportPlan, staging: Path, where: str, bar: Bar | None) -> dict[str, int]:
    """Verify every packed blob; adopt the new ones. Returns {digest: size} of blobs added."""
    expected = {b.sha256: b for b in bundle.packed}
    seen: set[str] = set()
    added: dict[str, int] = {}
    done = 0
    while member is not None:
        digest = member.name[len(BLOB_PREFIX):] if member.name.startswith(BLOB_PREFIX) else ""
        if digest not in expected or digest in seen:
            what = "a second copy of" if digest in seen else "an extra file"
            raise BundleError(f"{where}: unexpected member {member.name!r} ({what} not in the bundle "
                              "manifest); the bundle was tampered with; refused")
        entry = expected[digest]
        if member.size != entry.size:
            raise BundleIntegrityError(f"{where}: {member.name} is {member.size} bytes but the bundle manifest "
                                       f"says {entry.size}; the bundle was tampered with; refused")
        if digest in plan.write:
            _store_blob(store, tar, member, entry, staging, where)
            added[digest] = entry.size
        else:
            _check_blob(tar.data(member), entry, where, lambda _chunk: None)
        seen.add(digest)
        done += entry.size
        if bar is not None:
            bar.update_to(done, bundle.packed_bytes)
        member = tar.next()
    lost = [d for d in expected if d not in seen]
    if lost:
        raise BundleError(f"{where}: member {BLOB_PREFIX}{lost[0]} is missing ({len(lost)} blob(s) in all); "
                          "a file was removed from the bundle; copy or export it again")
    return added


def _check_blob(chunks: Iterable[bytes], entry: BlobEntry, where: str, sink: Callable[[bytes], object]) -> None:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        sink(chunk)
    if h.hexdigest() != entry.sha256:
        raise BundleIntegrityError(f"{where}: {BLOB_PREFIX}{entry.sha256} does not match its sha256 "
                                   f"(got {h.hexdigest()}); the bundle was tampered with or damaged; refused")


def _store_blob(store: Store, tar: TarReader, member: Member, entry: BlobEntry, staging: Path, where: str) -> None:
    staged = staging / entry.sha256
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except OSError as exc:
        raise disk_error(exc, store.tmp) from None

    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]

    try:
        _check_blob(tar.data(member), entry, where, write)
    except OSError as exc:
        raise disk_error(exc, store.tmp) from None
    finally:
        os.close(fd)
    try:
        store.adopt_blob(staged, entry.sha256)
    except OSError as exc:
        raise disk_error(exc, store.blobs) from None
    staged.unlink(missing_ok=True)


def _publish(store: Store, bundle: BundleManifest, plan: ImportPlan) -> None:
    """Everything checked: manifests and snapshots first (invisible), then view links and refs.

    Each model's view links go before its ref, under a ``publishing`` note, as in
    ``ingest.publish.record_model``: the next run undoes what a crash in between left half-done.
    """
    try:
        for change in plan.changes:
            manifest = bundle.manifests[change.ref.manifest]
            store.write_manifest(manifest)
            store.materialize(manifest)
        index = RefIndex(store)
        with publishing(store, [change.ref for change in plan.changes],
                        [bundle.manifests[change.ref.manifest] for change in plan.changes]):
            for change in plan.changes:
                relink(store, change.ref)
                if change.status != "unchanged":
                    index.write(change.ref)
    except OSError as exc:
        raise disk_error(exc, store.home) from None
