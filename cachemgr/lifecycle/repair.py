"""``verify --repair``: put damaged models back in service.

Cheapest first: a missing blob whose snapshot still holds good bytes is re-adopted from it;
a damaged snapshot whose manifest and blobs are intact is rebuilt from the blobs; anything
else (a corrupt blob, a lost manifest) is re-fetched through the Puller (origin, mirrors or
an upstream daemon), or with ``--from-bundle FILE`` imported from that bundle. The view is
restored afterwards; dangling view links are removed; writable snapshot files are made
read-only again.
"""

from __future__ import annotations

import os
from pathlib import Path

from cachemgr.bundle.importer import import_bundle
from cachemgr.errors import CachemgrError, NoSpaceError
from cachemgr.ingest.publish import relink
from cachemgr.lifecycle.hashing import sha256_file
from cachemgr.lifecycle.problems import ProblemKind, VerifyReport
from cachemgr.settings import Settings
from cachemgr.store.fs import NO_SPACE, disk_error
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store
from cachemgr.store.quarantine import quarantine
from cachemgr.store.refs import Ref, RefIndex


def _readopt(store: Store, ref: Ref, sha: str) -> bool:
    """Link a missing blob back from the model's snapshot if the bytes there are right."""
    try:
        manifest = store.read_manifest(ref.manifest)
    except CachemgrError:
        return False
    for f in manifest.files:
        if f.sha256 != sha:
            continue
        path = store.snapshot_path(ref.manifest) / f.path
        try:
            if sha256_file(str(path))[0] == sha:
                store.blob_path(sha).parent.mkdir(exist_ok=True)
                os.link(path, store.blob_path(sha))
                return True
        except FileExistsError:
            return True
        except OSError:
            continue
    return False


def _complete(store: Store, ref: Ref) -> bool:
    try:
        manifest = store.read_manifest(ref.manifest)
    except CachemgrError:
        return False
    return all(store.has_blob(s) for s in manifest.blob_digests())


def _rebuild(store: Store, ref: Ref) -> None:
    """Rebuild the snapshot of ``ref`` from its blobs and relink its view."""
    if store.snapshot_path(ref.manifest).exists():
        quarantine(store, store.snapshot_path(ref.manifest), "snapshot", ref.manifest, "replaced by a rebuild")
    relink(store, ref)


def _refetch(settings: Settings, store: Store, handles: list[str]) -> dict[str, str]:
    """Pull ``handles`` again; returns handle -> error message for the ones that failed."""
    if not handles:
        return {}
    from cachemgr.fetch.pull import pull_handles  # aiohttp: only a re-fetch needs it

    results = pull_handles(settings, store, handles, refresh=True)
    for r in results:
        if isinstance(r.error, NoSpaceError):
            raise r.error  # a full disk stops the repair (exit 10), it is no failed re-fetch
    return {r.asked: str(r.error) for r in results if r.error is not None}


def _from_bundle(settings: Settings, store: Store, bundle: Path, handles: list[str]) -> dict[str, str]:
    """Import ``bundle`` (it verifies every blob it brings); handles it did not restore fail."""
    try:
        import_bundle(store, [bundle], tuple(settings.trusted_keys), limits=Limits.of(settings))
    except NoSpaceError:
        raise
    except CachemgrError as err:
        return {h: f"importing {bundle} failed: {err}" for h in handles}
    index = RefIndex(store)
    out: dict[str, str] = {}
    for h in handles:
        ref = index.read(h)
        if ref is None or not _complete(store, ref):
            out[h] = f"{bundle} does not contain it"
    return out


def repair(settings: Settings, store: Store, report: VerifyReport, refs: list[Ref],
           bundle: Path | None = None) -> None:
    """Repair what ``report`` found, marking each problem repaired (or adding a repair error)."""
    by_handle = {r.handle: r for r in refs}
    broken: dict[str, set[ProblemKind]] = {}
    for p in report.problems:
        for h in p.models:
            broken.setdefault(h, set()).add(p.kind)
    fixed: set[str] = set()
    errors: dict[str, str] = {}

    for p in report.problems:
        if p.kind is ProblemKind.VIEW_DANGLING:
            try:
                (store.view / p.subject).unlink()
                (store.view / f"{p.subject}.descriptor.txt").unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            p.repaired, p.action = True, "removed"
        elif p.kind is ProblemKind.BLOB_MISSING:
            for h in p.models:
                if h in by_handle and _readopt(store, by_handle[h], p.subject):
                    p.action = "re-adopted from the snapshot"

    fetch = [h for h, kinds in broken.items() if h in by_handle and any(k.repairable for k in kinds)
             and not _complete(store, by_handle[h])]
    errors.update(_from_bundle(settings, store, bundle, fetch) if bundle else _refetch(settings, store, fetch))
    index = RefIndex(store)
    for h in fetch:
        if h not in errors:
            fixed.add(h)
    for h, kinds in broken.items():
        if h in fixed or h in errors or h not in by_handle or not all(k.repairable for k in kinds):
            continue
        ref = index.read(h) or by_handle[h]
        try:
            if any(k.out_of_service for k in kinds) or not store.snapshot_path(ref.manifest).is_dir():
                _rebuild(store, ref)
            if ProblemKind.SNAPSHOT_MODE in kinds:
                manifest = store.read_manifest(ref.manifest)
                for f in manifest.files:
                    os.chmod(store.snapshot_path(ref.manifest) / f.path, 0o444)
            if any(k.local or k.out_of_service for k in kinds):
                relink(store, ref)
            fixed.add(h)
        except NoSpaceError:
            raise
        except (CachemgrError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in NO_SPACE:
                raise disk_error(exc, store.home) from None
            errors[h] = f"{h}: cannot rebuild locally ({exc}); re-pull it"

    _relink_sharers(store, refs, {(index.read(h) or by_handle[h]).manifest for h in fixed if h in by_handle})

    for p in report.problems:
        if p.kind is ProblemKind.VIEW_DANGLING or not p.kind.repairable:
            continue
        if p.kind is ProblemKind.BLOB_CORRUPT and not p.models:
            p.repaired, p.action = True, "quarantined (no model uses it)"
            continue
        if p.models and all(h in fixed for h in p.models) and all(
                k.repairable for h in p.models for k in broken[h]):
            p.repaired = True
            fetched = "imported from the bundle" if bundle else "re-fetched"
            p.action = p.action or (fetched if any(h in fetch for h in p.models) else "rebuilt locally")
    report.repair_errors.extend(_repair_message(h, e, settings) for h, e in sorted(errors.items()))


def _relink_sharers(store: Store, refs: list[Ref], repaired: set[str]) -> None:
    """Relink every ref whose model (manifest) was repaired, not only the one the problem named.

    Two handles may name one model; verify reports a damaged snapshot once, under the first, and
    taking it out of service unlinked the aliases of all of them (a killed repair leaves that).
    """
    for ref in refs:
        if ref.manifest in repaired:
            try:
                relink(store, ref)
            except CachemgrError:
                pass  # its own problem, reported on its own


def _repair_message(handle: str, error: str, settings: Settings) -> str:
    if settings.offline:
        return (f"{handle}: cannot re-fetch while offline; go online and run `cachemgr verify --repair`, "
                "or import a bundle that contains it")
    return f"{handle}: re-fetch failed: {error}"

