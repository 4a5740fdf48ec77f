"""Pure planning, no I/O: what an export packs, and what an import adds to a store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from cachemgr.bundle.format import BlobEntry, BundleManifest, Inventory
from cachemgr.store.manifest import Manifest
from cachemgr.store.refs import Ref


def plan_blobs(refs: Iterable[Ref], manifests: Mapping[str, Manifest],
               have: Inventory | None) -> tuple[BlobEntry, ...]:
    """Every blob the refs need, once, in digest order; packed unless ``have`` holds it."""
    sizes: dict[str, int] = {}
    for ref in refs:
        for f in manifests[ref.manifest].files:
            sizes[f.sha256] = f.size
    return tuple(BlobEntry(d, s, have is None or d not in have.blobs) for d, s in sorted(sizes.items()))


@dataclass(frozen=True)
class LocalState:
    """What the receiving store holds, restricted to what the bundle mentions."""

    blobs: frozenset[str]
    manifests: frozenset[str]
    snapshots: frozenset[str]
    refs: Mapping[str, Ref]  # handle -> current ref, for the bundle's handles that exist


@dataclass(frozen=True)
class RefChange:
    ref: Ref  # what the store holds afterwards
    status: str  # "added" | "updated" | "unchanged"
    previous: str | None = None  # manifest digest before an update


@dataclass(frozen=True)
class ImportPlan:
    changes: tuple[RefChange, ...]
    write: frozenset[str]  # packed blobs to verify and store
    verify_only: frozenset[str]  # packed blobs already held: verify, keep ours
    missing: tuple[BlobEntry, ...]  # needed, held by neither side: the import is refused
    new_manifests: tuple[str, ...]
    new_snapshots: tuple[str, ...]

    @property
    def noop(self) -> bool:
        return (not self.write and not self.new_manifests and not self.new_snapshots
                and all(c.status == "unchanged" for c in self.changes))

    def by_status(self, status: str) -> list[str]:
        return [c.ref.handle for c in self.changes if c.status == status]


def merge_ref(incoming: Ref, previous: Ref | None) -> RefChange:
    """The bundle's ref wins (provenance and manifest); aliases known locally are kept."""
    if previous is None:
        return RefChange(incoming, "added")
    aliases = tuple(dict.fromkeys(incoming.aliases + previous.aliases))
    if previous.manifest == incoming.manifest:
        if set(aliases) == set(previous.aliases):
            return RefChange(previous, "unchanged")
        return RefChange(replace(previous, aliases=aliases), "updated", previous.manifest)  # new aliases
    return RefChange(replace(incoming, aliases=aliases), "updated", previous.manifest)


def plan_import(bundle: BundleManifest, local: LocalState) -> ImportPlan:
    changes = tuple(merge_ref(ref, local.refs.get(ref.handle)) for ref in bundle.refs)
    write = frozenset(b.sha256 for b in bundle.blobs if b.packed and b.sha256 not in local.blobs)
    verify_only = frozenset(b.sha256 for b in bundle.blobs if b.packed and b.sha256 in local.blobs)
    missing = tuple(b for b in bundle.blobs if not b.packed and b.sha256 not in local.blobs)
    wanted = sorted({c.ref.manifest for c in changes})
    return ImportPlan(
        changes=changes,
        write=write,
        verify_only=verify_only,
        missing=missing,
        new_manifests=tuple(d for d in wanted if d not in local.manifests),
        new_snapshots=tuple(d for d in wanted if d not in local.snapshots),
    )


def missing_report(bundle: BundleManifest, missing: tuple[BlobEntry, ...], where: str) -> str:
    """One line naming the missing blobs (a few, then a count) and the models that need them."""
    names = {b.sha256 for b in missing}
    needers = sorted(r.handle for r in bundle.refs
                     if names & bundle.manifests[r.manifest].blob_digests())
    shown = ", ".join(b.sha256 for b in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"{where} is a delta that relies on {len(missing)} blob(s) this store does not have: "
            f"{shown}{more} (needed by {', '.join(needers[:3])}{' ...' if len(needers) > 3 else ''}); "
            "nothing was changed; make a fresh `cachemgr inventory` here and export again with "
            "--have, or export without --have")
