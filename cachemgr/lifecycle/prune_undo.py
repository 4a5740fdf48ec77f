"""Undoing a prune that died: what it had moved into its trash goes back where nothing took its place.

A prune renames what it removes into ``tmp/prune.<host>.<pid>.<uuid>/`` and empties that
trash only after re-reading the refs (a pull may have revived something meanwhile). Killed in
between, it leaves content that a ref written meanwhile (or the ref it had just moved aside)
still needs. Collecting that trash as a plain dead temp would lose it. So before a dead
prune's trash goes, refs, manifests and blobs are linked back (never over a newer file), the
view links of a ref put back are restored where absent, and every snapshot that a ref names
and the trash held is rebuilt from its blobs (snapshots in the trash may be half emptied).
Rolling back is always safe: what a prune wanted gone is only kept until the next prune.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cachemgr.cluster.lease import is_stale, lease_path, read_lease
from cachemgr.errors import CachemgrError
from cachemgr.settings import Settings
from cachemgr.store.fs import owner_of, pid_alive, remove_quietly
from cachemgr.store.fskind import stale_for
from cachemgr.store.names import put_back
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.store.usage import host_tag
from cachemgr.store.view import link_aliases

TRASH_KIND = "prune"


def _link_back(store: Store, held: Path, dest: Path) -> bool:
    """Hard-link ``held`` to ``dest`` unless a file is listed there (a newer one, or the same
    content); True if it went back."""
    return put_back(held, dest, store.tmp)


def roll_back(store: Store, trash: Path) -> list[str]:
    """Put back what ``trash`` holds; returns the handles whose refs went back. Then removes it."""
    restored: list[str] = []
    touched: set[str] = set()
    for name in _names(trash / "manifests"):
        _link_back(store, trash / "manifests" / name, store.manifests / name)
        touched.add(name.removesuffix(".json"))
    for sha in _names(trash / "blobs"):
        _link_back(store, trash / "blobs" / sha, store.blob_path(sha))
    touched.update(_names(trash / "snapshots"))
    for name in _names(trash / "refs"):
        ref = put_back_ref(store, trash / "refs" / name)
        if ref is not None:
            restored.append(ref.handle)
            touched.add(ref.manifest)
    named = {ref.manifest for ref in RefIndex(store).all()}
    for digest in sorted(touched & named):
        _rebuild(store, digest)
    remove_quietly(trash)
    return restored


def put_back_ref(store: Store, held: Path) -> Ref | None:
    """Link the ref ``held`` (in a prune's trash) back, unless a newer one took its place; its
    snapshot is rebuilt if missing, its aliases and absent view links restored. The ref, if it went back."""
    if not _link_back(store, held, store.refs / held.name):
        return None
    try:
        ref = Ref.from_json(json.loads((store.refs / held.name).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None
    _rebuild(store, ref.manifest)
    RefIndex(store).write_aliases(ref)  # the prune dropped them with the ref
    absent = tuple(a for a in ref.aliases if not os.path.lexists(store.view_entry(a)))
    if absent:
        link_aliases(store, absent, ref.manifest)
    return ref


def _rebuild(store: Store, digest: str) -> None:
    if store.snapshot_path(digest).is_dir():
        return
    try:
        manifest = store.read_manifest(digest)
        if all(store.has_blob(sha) for sha in manifest.blob_digests()):
            store.materialize(manifest)
    except (CachemgrError, OSError):
        pass  # verify reports what could not be rebuilt, and repair re-fetches it


def _names(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def is_trash(name: str) -> bool:
    return name.startswith(TRASH_KIND + ".")


def dead_trashes(settings: Settings, store: Store) -> list[Path]:
    """Trash of prunes that are gone: their process died on this host, or (another host's) no
    live prune lease is held (every prune holds it while it runs: run_prune, run_remove)."""
    try:
        names = [n for n in os.listdir(store.tmp) if is_trash(n)]
    except FileNotFoundError:
        return []
    if not names:
        return []
    state = read_lease(lease_path(store.home, "prune"))
    nobody_prunes = state is None or is_stale(state, settings.lease_timeout, settings.node_id)
    out = []
    for name in names:
        owner = owner_of(name)
        if owner is not None and owner[0] == host_tag():
            if not pid_alive(owner[1]):
                out.append(store.tmp / name)
        elif nobody_prunes:
            out.append(store.tmp / name)
    return out


def roll_back_dead_prunes(settings: Settings, store: Store) -> list[str]:
    """Roll back every dead prune's trash (run by each command before it collects temps).

    First, this node's filesystem cache is given time to forget the names the dead prune
    renamed away: until then GlusterFS's FUSE client fails a link back onto such a name with
    EEXIST without asking the server, and takes a rename onto it for a no-op (measured)."""
    restored: list[str] = []
    trashes = dead_trashes(settings, store)
    if trashes:
        time.sleep(stale_for(settings.fs_cache_timeout, store.home))
    for trash in trashes:
        try:
            restored += roll_back(store, trash)
        except OSError:
            pass  # another user's trash, say: verify reports what is left
    return restored
