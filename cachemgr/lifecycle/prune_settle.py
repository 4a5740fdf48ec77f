"""Prune's second look at its trash, once every node's filesystem cache has caught up.

On a network filesystem a node's client may for a moment still show a name this prune just
renamed into its trash, and this prune's client may still show old attributes of a file that
another node just linked or touched (1 s on GlusterFS's FUSE client, measured on the test bed;
``store/fskind.py``). So the first look, when each item is renamed (``prune_exec._trash``), can
miss a racing pull's work: a pull that adopted a blob through a stale name links the inode
now in the trash, and one that marked a snapshot in use touched the snapshot now in the trash.

Once the cache timeout has passed twice after the last rename (the other nodes' stale view
ends, then ours), everything moved is looked at again, from the trash:

- a ref, snapshot or manifest changed since it was moved, or since the horizon (the scan, or
  an earlier in-flight pull's start), goes back;
- the snapshots left are emptied, and then a blob still linked from anywhere else (a pull's
  staging tree, a snapshot just put back or built) goes back.

Only then are the refs read again (``prune_exec._restore_needed``) and the trash emptied.
A local disk has no such cache: there the second look runs at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cachemgr.lifecycle.prune_plan import PrunePolicy
from cachemgr.lifecycle.prune_undo import put_back_ref
from cachemgr.store.fskind import stale_for
from cachemgr.store.names import put_back
from cachemgr.store.objects import Store


@dataclass
class Moved:
    """What a prune renamed into its trash; for refs, snapshots and manifests, each one's mtime
    as this prune saw it right after the move (a later change is another node's)."""

    refs: dict[str, float] = field(default_factory=dict)
    snapshots: dict[str, float] = field(default_factory=dict)
    manifests: dict[str, float] = field(default_factory=dict)
    blobs: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.refs or self.snapshots or self.manifests or self.blobs)

    def note(self, kind: dict[str, float], name: str, path: Path) -> None:
        try:
            kind[name] = os.lstat(path).st_mtime
        except FileNotFoundError:
            kind[name] = float("inf")


@dataclass
class Back:
    """What the second look put back."""

    handles: list[str] = field(default_factory=list)
    snapshots: set[str] = field(default_factory=set)
    manifests: int = 0
    blobs: int = 0


def settle_time(policy: PrunePolicy, home: Path) -> float:
    """How long to wait after the last rename before the second look (0 on a coherent filesystem)."""
    timeout = stale_for(policy.fs_cache_timeout, home)
    return 0.0 if timeout <= 0 else 2 * timeout + 0.1


def _changed(path: Path, moved_at: float, horizon: float) -> bool:
    try:
        mtime = os.lstat(path).st_mtime
    except FileNotFoundError:
        return False
    return mtime > moved_at or mtime >= horizon


def _rename_back(held: Path, dest: Path) -> bool:
    """Rename the snapshot ``held`` back unless a new one took the place (then ours is dropped)."""
    try:
        os.rename(held, dest)
    except OSError:
        return False
    return True


def second_look(store: Store, trash: Path, moved: Moved, horizon: float, empty: Callable[[Path], None]) -> Back:
    """Put back what another node touched or linked while this prune moved it (see the module).

    ``empty(path)`` deletes a tree (prune_exec._empty, counting freed bytes): the snapshots
    that stay in the trash are emptied before the blobs are looked at again."""
    back = Back()
    for name, at in moved.refs.items():
        held = trash / "refs" / name
        if _changed(held, at, horizon) and (ref := put_back_ref(store, held)) is not None:
            back.handles.append(ref.handle)
    for digest, at in moved.snapshots.items():
        held = trash / "snapshots" / digest
        if _changed(held, at, horizon) and _rename_back(held, store.snapshot_path(digest)):
            back.snapshots.add(digest)
    for digest, at in moved.manifests.items():
        held = trash / "manifests" / f"{digest}.json"
        if _changed(held, at, horizon) or digest in back.snapshots:
            back.manifests += put_back(held, store.manifest_path(digest), store.tmp)
    empty(trash / "snapshots")
    for sha in moved.blobs:
        held = trash / "blobs" / sha
        try:
            linked = os.lstat(held).st_nlink > 1
        except FileNotFoundError:
            continue
        if linked:
            back.blobs += put_back(held, store.blob_path(sha), store.tmp)
    return back


def wait_for_caches(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
