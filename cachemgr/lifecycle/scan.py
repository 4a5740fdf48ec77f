"""A point-in-time scan of what a store holds, taken with one pass over each directory.

The scan is plain data (frozen dataclasses): prune planning and ``du`` are pure functions
of it. The scan reads refs, manifests, pins and last-use records, lists blob and snapshot
names, and stats only what it must (manifests, snapshots, temps, unreferenced blobs). Blob
contents are never read and referenced blobs are never stat'ed: their sizes come from the
manifests, which keeps a scan of a million blobs cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from cachemgr.cluster.lease import LeaseState, all_leases
from cachemgr.cluster.nodes import read_nodes
from cachemgr.errors import CachemgrError
from cachemgr.store.fs import owner_of, pid_alive
from cachemgr.store.manifest import parse_manifest
from cachemgr.store.objects import Store
from cachemgr.store.pins import Pin, read_pins
from cachemgr.store.refs import Ref
from cachemgr.store.usage import host_tag, hub_key, tag_of, uses_by_node

TempOwner = Literal["live", "dead", "foreign"]


@dataclass(frozen=True)
class ModelRecord:
    handle: str
    manifest: str
    aliases: tuple[str, ...]
    size: int
    fetched_at: float
    ref_mtime: float
    last_use: float | None
    uses: tuple[tuple[str, float], ...] = ()  # (node tag, its newest use over all aliases)

    @property
    def last_activity(self) -> float:
        """When it was last used, or else written: what LRU and ``--unused-for`` look at."""
        return max(self.last_use or 0.0, self.fetched_at, self.ref_mtime)


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    blobs: tuple[tuple[str, int], ...]  # distinct (sha256, size)
    mtime: float
    readable: bool = True


@dataclass(frozen=True)
class TempRecord:
    name: str
    mtime: float
    owner: TempOwner


@dataclass(frozen=True)
class StoreScan:
    taken_at: float
    models: tuple[ModelRecord, ...]
    manifests: Mapping[str, ManifestRecord]
    snapshots: Mapping[str, float]  # digest -> mtime
    blobs: frozenset[str]
    loose_blobs: Mapping[str, tuple[int, float]]  # blobs no manifest names: sha -> (size, mtime)
    pins: tuple[Pin, ...]
    temps: tuple[TempRecord, ...]
    disk_free: int | None = None
    unreadable_refs: int = 0
    # Cluster: each node's last heartbeat (by node tag), and the leases held (live or not:
    # planning decides staleness with the policy's lease_timeout).
    heartbeats: Mapping[str, float] = field(default_factory=dict)
    leases: tuple[LeaseState, ...] = ()

    def blob_sizes(self) -> dict[str, int]:
        """Size of every blob present (from manifests, or stat for loose ones)."""
        sizes: dict[str, int] = {}
        for rec in self.manifests.values():
            for sha, size in rec.blobs:
                if sha in self.blobs:
                    sizes[sha] = size
        for sha, (size, _mtime) in self.loose_blobs.items():
            sizes[sha] = size
        return sizes


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def _read_manifest(path: str, digest: str, mtime: float) -> ManifestRecord:
    try:
        with open(path, "rb") as fh:
            manifest = parse_manifest(fh.read(), path)
    except (OSError, CachemgrError):
        return ManifestRecord(digest, (), mtime, readable=False)
    sizes = {f.sha256: f.size for f in manifest.files}
    return ManifestRecord(digest, tuple(sorted(sizes.items())), mtime)


def _node_uses(aliases: tuple[str, ...], uses: dict[str, dict[str, float]]) -> tuple[tuple[str, float], ...]:
    per: dict[str, float] = {}
    for alias in aliases:
        for tag, when in uses.get(hub_key(alias), {}).items():
            per[tag] = max(per.get(tag, 0.0), when)
    return tuple(sorted(per.items()))


def scan_models(store: Store, uses: dict[str, dict[str, float]] | None = None) -> tuple[list[ModelRecord], int]:
    """Every readable ref, with its last use per node (newest over all aliases); and how many
    ref files could not be read."""
    uses = uses_by_node(store.home) if uses is None else uses
    out: list[ModelRecord] = []
    bad = 0
    try:
        entries = list(os.scandir(store.refs))
    except FileNotFoundError:
        return out, bad
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            with open(entry.path, "rb") as fh:
                mtime = os.fstat(fh.fileno()).st_mtime
                ref = Ref.from_json(json.loads(fh.read()))
            node_uses = _node_uses(ref.aliases, uses)
            out.append(ModelRecord(ref.handle, ref.manifest, ref.aliases, ref.size, ref.fetched_at, mtime,
                                   max((t for _, t in node_uses), default=None), node_uses))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError):
            bad += 1
    out.sort(key=lambda m: m.handle)
    return out, bad


def scan_temps(store: Store) -> list[TempRecord]:
    out: list[TempRecord] = []
    try:
        entries = list(os.scandir(store.tmp))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        owner = owner_of(entry.name)
        kind: TempOwner = "foreign"
        if owner is not None and owner[0] == host_tag():
            kind = "live" if owner[1] == os.getpid() or pid_alive(owner[1]) else "dead"
        out.append(TempRecord(entry.name, mtime, kind))
    return out


def scan(store: Store, *, disk: bool = True) -> StoreScan:
    """Take the scan. ``taken_at`` is when the scan started: anything newer is in flight."""
    taken_at = time.time()
    models, bad_refs = scan_models(store)

    manifests: dict[str, ManifestRecord] = {}
    try:
        entries = list(os.scandir(store.manifests))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            mtime = entry.stat().st_mtime
        except FileNotFoundError:
            continue
        digest = entry.name[:-5]
        manifests[digest] = _read_manifest(entry.path, digest, mtime)

    snapshots: dict[str, float] = {}
    try:
        names = os.listdir(store.snapshots)
    except FileNotFoundError:
        names = []
    for name in names:
        snap_mtime = _mtime(os.path.join(store.snapshots, name))
        if snap_mtime is not None:
            snapshots[name] = snap_mtime

    blobs = store.blob_names()
    named = {sha for rec in manifests.values() for sha, _ in rec.blobs}
    loose: dict[str, tuple[int, float]] = {}
    for sha in blobs - named:
        try:
            st = os.lstat(os.path.join(store.blobs, sha[:2], sha))
        except FileNotFoundError:
            continue
        loose[sha] = (st.st_size, st.st_mtime)

    disk_free = None
    if disk:
        try:
            disk_free = shutil.disk_usage(store.home).free
        except OSError:
            disk_free = None
    nodes, _bad_nodes = read_nodes(store.home)
    heartbeats = {tag_of(n.node): n.heartbeat for n in nodes}
    return StoreScan(
        taken_at, tuple(models), manifests, snapshots, frozenset(blobs), loose,
        tuple(read_pins(store)), tuple(scan_temps(store)), disk_free, bad_refs,
        heartbeats, tuple(all_leases(store.home)),
    )
