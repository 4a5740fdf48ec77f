"""Executing a prune plan, safely against concurrent pulls and running readers.

Order: each evicted model's view links, aliases, ref and last-use records; then snapshots;
then manifests and unreferenced blobs; then leftover temps. Nothing is deleted in place:
items are renamed into a private trash directory under ``tmp/`` first. An item that changed
after the horizon (the scan, or the start of a pull or import still running then: newer
mtime/ctime), or a blob with another hard link (a kept snapshot, an in-flight pull's staging
tree), is skipped. Once other nodes' filesystem caches have caught up with the renames, the
trash gets a second look (``prune_settle``), then the refs are read again and anything a ref
written meanwhile needs is renamed back (a pull that raced with us); then the trash is emptied.

Deletion is ``unlink``: a process that has files of a pruned model open keeps reading them.
Freed bytes are counted when the last link of a file goes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachemgr.cluster.exclusive import exclusive
from cachemgr.cluster.nodes import announce
from cachemgr.errors import StoreBusyError
from cachemgr.lifecycle.prune_plan import Eviction, PrunePlan, PrunePolicy, plan_prune
from cachemgr.lifecycle.prune_settle import Back, Moved, second_look, settle_time, wait_for_caches
from cachemgr.lifecycle.prune_undo import is_trash, roll_back
from cachemgr.lifecycle.scan import scan, scan_models
from cachemgr.progress import Bar
from cachemgr.settings import Settings
from cachemgr.store.fs import remove_quietly
from cachemgr.store.names import move_aside, put_back
from cachemgr.store.objects import Store
from cachemgr.store.pins import read_pins
from cachemgr.store.refs import key_of
from cachemgr.store.view import hub_key

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    evicted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    snapshots: int = 0
    manifests: int = 0
    blobs: int = 0
    temps: int = 0
    restored: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"evicted": self.evicted, "freed_bytes": self.freed_bytes, "removed": {
            "snapshots": self.snapshots, "manifests": self.manifests, "blobs": self.blobs, "temps": self.temps},
            "restored": self.restored, "skipped": self.skipped}


def _unlink_counting(path: str, result: PruneResult) -> None:
    try:
        st = os.lstat(path)
        os.unlink(path)
    except FileNotFoundError:
        return
    if st.st_nlink == 1:
        result.freed_bytes += st.st_size


def _empty(tree: Path, result: PruneResult) -> None:
    """Delete ``tree``, counting the bytes of files whose last link goes.

    A link is removed, never followed: os.walk walks into a top-level symlink, and a killed
    run's temp link (``tmp/l.*``, on its way to the view) points at a snapshot."""
    if tree.is_symlink() or not tree.is_dir():
        remove_quietly(tree)
        return
    for root, dirs, files in os.walk(tree, topdown=True):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o755)
            except OSError:
                pass
        for name in files:
            _unlink_counting(os.path.join(root, name), result)
    remove_quietly(tree)


def _drop_model(store: Store, ev: Eviction, taken_at: float, trash: Path, result: PruneResult,
                moved: Moved) -> bool:
    """Remove an evicted model's ref, then its view links and aliases.

    The ref is first renamed into the trash, then checked: one touched after the scan (a pull
    that found the model present and marked it in use) is put back and the model is kept.
    """
    ref_path = store.refs / f"{key_of(ev.handle)}.json"
    held = trash / "refs" / ref_path.name
    if not move_aside(ref_path, held):
        return True  # already gone (another prune)
    try:
        with open(held, "rb") as fh:
            mtime = os.fstat(fh.fileno()).st_mtime
            changed = mtime >= taken_at
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        mtime, changed, doc = 0.0, True, {}
    if changed or doc.get("manifest") != ev.manifest:
        try:
            os.link(held, ref_path)  # put it back, unless a newer ref was written meanwhile
        except FileExistsError:
            pass
        result.skipped.append(f"{ev.handle}: used or re-pulled after the scan")
        return False
    moved.refs[held.name] = mtime
    target = store.view_target(ev.manifest)
    aliases = tuple(doc.get("aliases", ())) + ev.aliases
    for alias in dict.fromkeys(aliases):
        link = store.view_entry(alias)
        try:
            if os.readlink(link) == target:
                os.unlink(link)
                _unlink_counting(str(store.view / f"{hub_key(alias)}.descriptor.txt"), result)
        except OSError:
            pass
        entry = store.aliases / key_of(alias)
        try:
            if entry.read_text() == ev.handle:
                _unlink_counting(str(entry), result)
        except OSError:
            pass
    return True


def _drop_dangling_links(store: Store, gone: set[str]) -> None:
    """Remove view links to snapshots this prune deleted (a racing relink may have re-made some)."""
    if not gone:
        return
    try:
        entries = list(os.scandir(store.view))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue
        if os.path.basename(target) in gone and not os.path.exists(entry.path):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


def _drop_uses(store: Store, aliases: set[str]) -> None:
    names = {hub_key(a) for a in aliases}
    try:
        entries = list(os.scandir(store.uses))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.split(".", 1)[0] in names:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


def _trash(src: Path, dest: Path, taken_at: float, own_links: Counter[int] | None = None) -> bool:
    """Rename ``src`` into the trash unless it changed after the scan (or, for a blob, has a
    hard link besides those of snapshots in this trash, ``own_links`` by inode: a kept
    snapshot or an in-flight pull's staging tree)."""
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return False
    if st.st_mtime >= taken_at or (own_links is not None and st.st_nlink > 1 + own_links[st.st_ino]):
        return False
    return move_aside(src, dest)


def _links_in(tree: Path) -> Counter[int]:
    """Hard links to each inode from the files under ``tree`` (snapshots moved to the trash)."""
    links: Counter[int] = Counter()
    for root, _dirs, files in os.walk(tree):
        for name in files:
            try:
                links[os.lstat(os.path.join(root, name)).st_ino] += 1
            except FileNotFoundError:
                continue
    return links


def _ctime(store: Store, sha: str) -> float:
    try:
        return os.lstat(store.blob_path(sha)).st_ctime
    except FileNotFoundError:
        return float("inf")


def _restore_needed(store: Store, trash: Path, plan: PrunePlan, result: PruneResult) -> None:
    """Put back what refs written since the scan need (a pull that raced with this prune)."""
    models, _bad = scan_models(store, uses={})
    needed = {m.manifest for m in models} | {p.digest for p in read_pins(store) if p.digest}
    revived = needed - plan.kept_manifests
    for digest in sorted(revived):
        held = trash / "manifests" / f"{digest}.json"
        if held.exists() and put_back(held, store.manifest_path(digest), store.tmp):
            result.restored += 1
            result.manifests -= 1
        try:
            manifest = store.read_manifest(digest)
        except Exception:  # noqa: BLE001 - a missing manifest is verify's business
            continue
        for sha in manifest.blob_digests():
            held = trash / "blobs" / sha
            if held.exists() and put_back(held, store.blob_path(sha), store.tmp):
                result.restored += 1
                result.blobs -= 1
        if not store.snapshot_path(digest).is_dir() and all(store.has_blob(s) for s in manifest.blob_digests()):
            store.materialize(manifest)


def _count_back(result: PruneResult, back: Back) -> None:
    for handle in back.handles:
        if handle in result.evicted:
            result.evicted.remove(handle)
        result.skipped.append(f"{handle}: used or re-pulled while it was being pruned")
    result.snapshots -= len(back.snapshots)
    result.manifests -= back.manifests
    result.blobs -= back.blobs
    result.restored += len(back.handles) + len(back.snapshots) + back.manifests + back.blobs


def execute_prune(store: Store, plan: PrunePlan, bar: Bar | None = None) -> PruneResult:
    """Carry out ``plan`` on ``store``; returns what was removed and the bytes freed.

    ``bar`` (a progress bar on a TTY) counts the plan's items: models, snapshots, manifests,
    blobs and temps, whether each was removed or skipped.
    """
    result = PruneResult()
    taken_at = plan.horizon  # what a pull running since before the scan touched is its work too
    if plan.is_empty():
        return result
    started = time.monotonic()
    total = len(plan.evict) + len(plan.snapshots) + len(plan.manifests) + len(plan.blobs) + len(plan.temps)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update_to(done, total)
    trash = store.new_temp("prune")
    moved = Moved()
    try:
        (trash / "refs").mkdir()
        dropped: set[str] = set()
        for ev in plan.evict:
            if _drop_model(store, ev, taken_at, trash, result, moved):
                result.evicted.append(ev.handle)
                dropped.update(ev.aliases)
            tick()
        _drop_uses(store, dropped)
        # What refs (and pins) hold right now: a concurrent pull may have revived content.
        models, _bad = scan_models(store, uses={})
        live = {m.manifest for m in models} | {p.digest for p in read_pins(store) if p.digest}
        revived_blobs: set[str] = set()
        for digest in live - plan.kept_manifests:
            try:
                revived_blobs |= store.read_manifest(digest).blob_digests()
            except Exception:  # noqa: BLE001 - missing or corrupt: nothing to keep alive
                continue
        for sub in ("snapshots", "manifests", "blobs"):
            (trash / sub).mkdir()
        # A blob linked or unlinked after the scan (ctime) is in flight. Looked at before our own
        # snapshot deletions below change the blobs' ctimes.
        blobs = [sha for sha in plan.blobs if sha not in revived_blobs and _ctime(store, sha) < taken_at]
        gone: set[str] = set()
        for digest in plan.snapshots:
            dest = trash / "snapshots" / digest
            if digest not in live and _trash(store.snapshot_path(digest), dest, taken_at):
                moved.note(moved.snapshots, digest, dest)
                result.snapshots += 1
                gone.add(digest)
            tick()
        own_links = _links_in(trash / "snapshots")  # emptied only after the second look
        for digest in plan.manifests:
            dest = trash / "manifests" / f"{digest}.json"
            if digest not in live and _trash(store.manifest_path(digest), dest, taken_at):
                moved.note(moved.manifests, digest, dest)
                result.manifests += 1
            tick()
        for _kept in range(len(plan.blobs) - len(blobs)):  # revived or in flight: kept, but counted
            tick()
        for sha in blobs:
            if _trash(store.blob_path(sha), trash / "blobs" / sha, taken_at, own_links):
                moved.blobs.append(sha)
                result.blobs += 1
            tick()
        if moved.any():
            wait_for_caches(settle_time(plan.policy, store.home))  # every node's view of our renames is fresh
        back = second_look(store, trash, moved, taken_at, lambda tree: _empty(tree, result))
        _count_back(result, back)
        gone -= back.snapshots
        _restore_needed(store, trash, plan, result)
        _drop_dangling_links(store, gone)
        for name in plan.temps:
            tick()
            path = store.tmp / name
            try:
                if os.lstat(path).st_mtime < taken_at:
                    if is_trash(name):  # a dead prune's: what a ref still needs goes back first
                        result.restored += len(roll_back(store, path))
                    else:
                        _empty(path, result)
                    result.temps += 1
            except FileNotFoundError:
                continue
    finally:
        _empty(trash, result)
    seconds = time.monotonic() - started
    log.info("prune: %d model(s) evicted, %d bytes freed in %.2f s (removed %d snapshots, %d manifests, %d blobs, "
             "%d temps; %d restored, %d skipped)", len(result.evicted), result.freed_bytes, seconds, result.snapshots,
             result.manifests, result.blobs, result.temps, result.restored, len(result.skipped),
             extra={"event": "prune", "seconds": round(seconds, 3), **result.to_json()})
    return result


def policy_from_settings(settings: Settings) -> PrunePolicy | None:
    """The daemon's watermarks (``prune_*`` settings), or None when none is configured."""
    if all(v is None for v in (settings.prune_max_size, settings.prune_min_free, settings.prune_unused_for,
                               settings.prune_keep_versions)):
        return None
    return PrunePolicy.from_settings(settings)


def auto_prune(settings: Settings, store: Store, now: float | None = None) -> PruneResult | None:
    """Prune by the configured watermarks (for the daemon). None if no watermark is set."""
    policy = policy_from_settings(settings)
    if policy is None:
        return None
    try:
        _plan, result = run_prune(settings, store, policy, now=now)
    except StoreBusyError:
        return PruneResult()  # another node is pruning this store right now
    return result


def run_prune(settings: Settings, store: Store, policy: PrunePolicy, *, dry_run: bool = False,
              now: float | None = None, bar: Bar | None = None) -> tuple[PrunePlan, PruneResult | None]:
    """Scan, plan and (unless ``dry_run``) execute, under the store's prune lease: one node
    prunes a shared store at a time (StoreBusyError otherwise). A dry run takes no lease."""
    if dry_run:
        return plan_prune(scan(store), policy, time.time() if now is None else now), None
    announce(settings, "cli", fault=store.fault)
    with exclusive(settings, "prune", "prune"):
        plan = plan_prune(scan(store), policy, time.time() if now is None else now)
        return plan, (PruneResult() if plan.is_empty() else execute_prune(store, plan, bar))
