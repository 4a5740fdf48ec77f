"""Prune's second look (lifecycle/prune_settle.py): what another node touched or linked while
the prune moved it into its trash goes back; the rest stays in the trash, its snapshots emptied.

The trash is built as prune_exec builds it (store/names.move_aside, the mtime each item had
just after the move), then "another node" acts on the moved items through what it still has:
it marks a snapshot in use (its mtime), and links a blob into its staging tree, the way a pull
on a node whose lookups still showed the old names does (test_cluster_kills.py on GlusterFS).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cachemgr.lifecycle.prune_settle import Moved, second_look
from cachemgr.store.names import listed, move_aside
from cachemgr.store.objects import Store
from tests.support.cli import Cli
from tests.support.suite import Archives

USED, IDLE = "https://tfhub.dev/google/mymul/1", "https://tfhub.dev/google/text/1"


def _digest(home: Path, handle: str) -> str:
    for ref in (home / "refs").glob("*.json"):
        doc = json.loads(ref.read_text())
        if doc["handle"] == handle:
            return str(doc["manifest"])
    raise AssertionError(f"no ref for {handle}")


def _blobs(store: Store, digest: str) -> list[str]:
    return sorted(store.read_manifest(digest).blob_digests())


def test_what_another_node_touched_or_linked_goes_back_and_the_rest_is_emptied(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    for handle, body in ((USED, archives.mymul), (IDLE, archives.text_v1)):
        (tmp_path / "m.tar.gz").write_bytes(body)
        assert cli("add", handle, str(tmp_path / "m.tar.gz")).code == 0
    store = Store(home)
    used, idle = _digest(home, USED), _digest(home, IDLE)
    of = {d: set(_blobs(store, d)) for d in (used, idle)}
    shared = of[used] & of[idle]
    trash = store.new_temp("prune")
    for sub in ("refs", "snapshots", "manifests", "blobs"):
        (trash / sub).mkdir()
    moved = Moved()
    for digest in (used, idle):
        assert move_aside(store.snapshot_path(digest), trash / "snapshots" / digest)
        moved.note(moved.snapshots, digest, trash / "snapshots" / digest)
        assert move_aside(store.manifest_path(digest), trash / "manifests" / f"{digest}.json")
        moved.note(moved.manifests, digest, trash / "manifests" / f"{digest}.json")
    for sha in sorted(of[used] | of[idle]):
        assert move_aside(store.blob_path(sha), trash / "blobs" / sha)
        moved.blobs.append(sha)
    assert not store.snapshot_path(used).exists() and not listed(store.manifest_path(used))
    horizon = max(moved.snapshots.values()) + 3600  # nothing counts as touched by the horizon alone

    later = max(moved.snapshots.values()) + 5
    os.utime(trash / "snapshots" / used, (later, later))  # marked in use through a name it still had
    staging = tmp_path / "staging-tree"
    staging.mkdir()
    linked = sorted(of[idle] - shared)[0]
    os.link(trash / "blobs" / linked, staging / linked)  # adopted by a pull through its old name

    emptied: list[Path] = []

    def empty(tree: Path) -> None:
        emptied.append(tree)
        for root, _dirs, files in os.walk(tree):
            for name in files:
                os.unlink(os.path.join(root, name))

    back = second_look(store, trash, moved, horizon, empty)
    assert back.snapshots == {used} and back.manifests == 1
    assert store.snapshot_path(used).is_dir() and store.manifest_path(used).exists()
    assert not store.snapshot_path(idle).exists() and not store.manifest_path(idle).exists()
    assert emptied == [trash / "snapshots"]
    back_blobs = {sha for sha in moved.blobs if listed(store.blob_path(sha))}
    assert back_blobs == of[used] | {linked}  # the kept snapshot's, and the adopted one
    assert back.blobs == len(back_blobs)
    for sha in back_blobs:  # every one put back is the very file, still linked from its holder
        assert os.lstat(store.blob_path(sha)).st_nlink >= 2
