"""OCI image layout directories: ``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``.

Export writes one ModelPack artifact per model into a new directory (a private sibling,
renamed into place when complete); blobs are hard links to the store's read-only files (a
copy across file systems). Each ``index.json`` entry names its model with
``org.opencontainers.image.ref.name`` = ``REPO:TAG`` as ``push`` maps it, so
``skopeo copy oci:DIR:google/mymul:1 docker://...`` pushes it.

Import applies the checks a bundle gets: every digest in ``index.json`` is ``sha256:<hex>``
(so no path is taken from the layout), every file is opened without following a link, every
manifest passes the one manifest check (modelpack.parse_artifact) before a blob is read, every
blob's size and sha256 are checked while it is copied, and only then do manifests, snapshots,
refs and view links appear.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachemgr.errors import IntegrityError, UnsafeManifestError, UsageError
from cachemgr.handles import Handle, parse_handle
from cachemgr.ingest.publish import record_model
from cachemgr.ingest.unpack import IngestResult
from cachemgr.oci.modelpack import (
    ARTIFACT_TYPE,
    MAX_CONFIG_BYTES,
    OCI_MANIFEST,
    Model,
    build_artifact,
    check_config,
    max_manifest_bytes,
    parse_artifact,
)
from cachemgr.oci.reference import Registry, reference_for
from cachemgr.store.fs import disk_error, link_or_copy, open_no_follow, remove_quietly, unique_name
from cachemgr.store.manifest import Limits, is_digest
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
MAX_INDEX_BYTES = 16 << 20
CHUNK = 1 << 20


@dataclass(frozen=True)
class LayoutExport:
    path: Path
    models: list[str]
    names: list[str]
    blobs: int
    size: int


@dataclass
class LayoutImport:
    where: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    blobs_added: int = 0
    bytes_added: int = 0
    blobs_verified: int = 0

    def to_json(self) -> dict[str, object]:
        return {"layout": self.where, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "blobs_added": self.blobs_added, "bytes_added": self.bytes_added,
                "blobs_verified": self.blobs_verified}


def is_layout(path: Path) -> bool:
    return path.is_dir() and (path / LAYOUT_FILE).exists()


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def export_layout(store: Store, refs: list[Ref], out: Path) -> LayoutExport:
    """Write ``refs`` as an OCI image layout at ``out`` (a new or empty directory)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty directory; give a new directory for the layout")
    parent = out.parent if str(out.parent) else Path(".")
    staging = parent / f".{out.name}.{unique_name('layout')}"
    try:
        blobs = staging / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        entries, names, size = [], [], 0
        for ref in refs:
            artifact = build_artifact(store.read_manifest(ref.manifest), ref)
            for digest, blob_size in artifact.layers:
                if not (blobs / digest).exists():
                    link_or_copy(store.blob_path(digest), blobs / digest)
                    size += blob_size
            for data in (artifact.config, artifact.manifest):
                digest = hashlib.sha256(data).hexdigest()
                if not (blobs / digest).exists():
                    _write(blobs / digest, data)
                    size += len(data)
            where = reference_for(Registry("layout", ""), ref.handle)
            name = f"{where.repository}:{where.tag}"
            names.append(name)
            entries.append({"mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                            "digest": f"sha256:{artifact.digest}", "size": len(artifact.manifest),
                            "annotations": {REF_NAME: name, "io.cachemgr.handle": ref.handle}})
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        _write(staging / INDEX_FILE, json.dumps(index, indent=1).encode())
        _write(staging / LAYOUT_FILE, b'{"imageLayoutVersion":"1.0.0"}')
        count = len(os.listdir(blobs))
        if out.is_dir():
            out.rmdir()
        os.rename(staging, out)
    except OSError as exc:
        raise disk_error(exc, out) from None
    finally:
        remove_quietly(staging)
    return LayoutExport(out, [r.handle for r in refs], names, count, size)


def _read(root: Path, rel: str, cap: int, where: str) -> bytes:
    try:
        fd = open_no_follow(root, root / rel)
    except FileNotFoundError:
        raise UnsafeManifestError(f"{where}: {rel} is missing; copy the whole layout again") from None
    except OSError as exc:
        raise UnsafeManifestError(f"{where}: {rel} cannot be read as a plain file ({exc.strerror}); refused") \
            from None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise UnsafeManifestError(f"{where}: {rel}: {exc.strerror}; refused") from None
    if len(data) > cap:
        raise UnsafeManifestError(f"{where}: {rel} is larger than {cap} bytes; refused")
    return data


def _verified(root: Path, digest: str, size: int, cap: int, where: str) -> bytes:
    data = _read(root, f"blobs/sha256/{digest}", cap, where)
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"{where}: blobs/sha256/{digest} does not match its size or sha256; the layout was "
                             "tampered with or damaged, refused")
    return data


def read_models(root: Path, limits: Limits) -> list[Model]:
    """Every model in the layout at ``root``, each manifest and config checked (no blob read yet)."""
    where = f"layout {root}"
    try:
        version = json.loads(_read(root, LAYOUT_FILE, 4096, where)).get("imageLayoutVersion")
        index = json.loads(_read(root, INDEX_FILE, MAX_INDEX_BYTES, where))
    except (ValueError, AttributeError, RecursionError):
        raise UnsafeManifestError(f"{where}: {LAYOUT_FILE} or {INDEX_FILE} is not valid JSON; refused") from None
    if version != "1.0.0":
        raise UnsafeManifestError(f"{where}: image layout version {version!r} is not 1.0.0; refused")
    entries: Any = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UnsafeManifestError(f"{where}: {INDEX_FILE} lists no manifests; refused")
    models = []
    for entry in entries:
        digest = entry.get("digest", "") if isinstance(entry, dict) else ""
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not digest.startswith("sha256:") or not is_digest(digest[7:]):
            raise UnsafeManifestError(f"{where}: {INDEX_FILE} names {str(digest)[:80]!r}, not sha256:<64 hex "
                                      "digits>; refused")
        if entry.get("mediaType") != OCI_MANIFEST or isinstance(size, bool) or not isinstance(size, int):
            raise UnsafeManifestError(f"{where}: {INDEX_FILE} entry {digest} is not an image manifest with a "
                                      "size; refused")
        data = _verified(root, digest[7:], size, max_manifest_bytes(limits), where)
        model = parse_artifact(data, f"{where} manifest {digest}", limits)
        check_config(_verified(root, model.config_digest, model.config_size, MAX_CONFIG_BYTES, where), where)
        models.append(model)
    return models


def _copy_verified(store: Store, root: Path, digest: str, size: int, staging: Path, keep: bool, where: str) -> None:
    """Hash (and with ``keep`` copy, then adopt) one blob of the layout; a mismatch is refused."""
    try:
        src = open_no_follow(root, root / "blobs" / "sha256" / digest)
    except OSError as exc:
        raise UnsafeManifestError(f"{where}: blobs/sha256/{digest} is missing or not a plain file "
                                  f"({exc.strerror}); refused") from None
    sha, got = hashlib.sha256(), 0
    out = staging / digest
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444) if keep else -1
    try:
        while chunk := os.read(src, CHUNK):
            got += len(chunk)
            if got > size:
                break
            sha.update(chunk)
            view = memoryview(chunk)
            while keep and view:
                view = view[os.write(dst, view):]
    finally:
        os.close(src)
        if keep:
            os.close(dst)
    if got != size or sha.hexdigest() != digest:
        raise IntegrityError(f"{where}: blobs/sha256/{digest} does not match its size or sha256; the layout was "
                             "tampered with or damaged, refused")
    if keep:
        store.adopt_blob(out, digest)
        out.unlink(missing_ok=True)


def import_layout(store: Store, root: Path, limits: Limits, dry_run: bool = False) -> LayoutImport:
    """Verify everything in the layout at ``root``, then publish its models (``dry_run``: only say what)."""
    where = f"layout {root}"
    models = read_models(root, limits)
    sizes = {f.sha256: f.size for m in models for f in m.manifest.files}
    result = LayoutImport(str(root))
    if dry_run:
        for digest, size in sorted(sizes.items()):
            _copy_verified(store, root, digest, size, root, False, where)
            result.blobs_verified += 1
            if not store.has_blob(digest):
                result.blobs_added += 1
                result.bytes_added += size
        for model in models:
            _status(store, result, model)
        return result
    store.create()
    with store.in_flight():
        staging = store.new_temp("layout")
        try:
            for digest, size in sorted(sizes.items()):
                keep = not store.has_blob(digest)
                _copy_verified(store, root, digest, size, staging, keep, where)
                result.blobs_verified += 1
                if keep:
                    result.blobs_added += 1
                    result.bytes_added += size
        except OSError as exc:
            raise disk_error(exc, store.tmp) from None
        finally:
            remove_quietly(staging)
        for model in models:  # everything verified: now manifests, snapshots, refs and the view
            handle = _status(store, result, model)
            store.write_manifest(model.manifest)
            snapshot = store.materialize(model.manifest)
            ingest = IngestResult(model.manifest, model.manifest.digest, snapshot, None, 0, 0)
            record_model(store, handle, ingest, source=where, url=model.url, chain=list(model.aliases),
                         etag=model.etag, x_goog_hash=model.x_goog_hash, archive_size=model.archive_size)
    return result


def _status(store: Store, result: LayoutImport, model: Model) -> Handle:
    """Count ``model`` as added, updated or unchanged in ``result``; its handle."""
    handle = parse_handle(model.handle)
    previous = RefIndex(store).read(handle.canonical) if store.exists() else None
    status = "added" if previous is None else (
        "unchanged" if previous.manifest == model.manifest.digest else "updated")
    getattr(result, status).append(handle.canonical)
    return handle
