"""Recording an ingested model: its ref (with provenance and aliases) and its view links.

A ref and its view links are several files, so no rename publishes them together. While
they change, a note ``tmp/publish.<host>.<pid>.<uuid>`` names the handles (``publishing``);
a run killed in between leaves it, and the next command (``finish_dead_publishes``, before
it collects the dead run's temps) sets those handles' view links to what their refs say.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cachemgr.errors import CachemgrError, StoreError
from cachemgr.handles import Handle, learned_handle
from cachemgr.ingest.unpack import IngestResult
from cachemgr.store.fs import disk_error, owner_of, pid_alive, remove_quietly, unique_name
from cachemgr.store.manifest import Manifest
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex, merged_aliases, with_aliases
from cachemgr.store.usage import host_tag
from cachemgr.store.view import link_aliases


def record_model(
    store: Store,
    handle: Handle,
    result: IngestResult,
    *,
    source: str,
    url: str = "",
    chain: list[str] | None = None,
    etag: str | None = None,
    x_goog_hash: str | None = None,
    archive_size: int | None = None,
) -> Ref:
    """Write the ref for ``handle`` -> ``result`` and link every alias in the view."""
    index = RefIndex(store)
    previous = index.read(handle.canonical)
    learned = [h for h in (learned_handle(u) for u in chain or []) if h is not None]
    aliases = merged_aliases(handle, learned, previous)
    ref = Ref(
        handle=handle.canonical,
        manifest=result.digest,
        aliases=aliases,
        size=result.manifest.size,
        files=len(result.manifest.files),
        source=source,
        asked=handle.asked,
        url=url,
        fetched_at=time.time(),
        etag=etag,
        x_goog_hash=x_goog_hash,
        archive_size=archive_size,
        learned=tuple(dict.fromkeys(h.canonical for h in learned)),
    )
    # The view first, the ref last (a new handle killed in between leaves only links to a complete
    # snapshot, which prune collects); the note lets the next run undo a half-done update.
    with publishing(store, [ref], [result.manifest]):
        link_aliases(store, ref.aliases, ref.manifest)
        index.write(ref)
    return ref


def relink(store: Store, ref: Ref, extra: Handle | None = None) -> Ref:
    """Make sure the view answers every alias of ``ref`` (plus ``extra``'s forms).

    The snapshot is marked in use (its mtime: a running prune then keeps it and its blobs), or
    rebuilt from blobs if missing, before anything is written, so a model pruned meanwhile
    raises StoreError instead of getting its ref back.
    """
    snapshot = store.snapshot_path(ref.manifest)
    try:
        os.utime(snapshot)
    except FileNotFoundError:
        try:
            store.materialize(store.read_manifest(ref.manifest))
        except FileNotFoundError:
            raise StoreError(f"{ref.handle}: a blob is missing, the snapshot cannot be rebuilt; "
                             "run `cachemgr verify --repair`") from None
    except OSError:
        pass  # another user's snapshot: it exists, which is what matters
    if extra is not None and any(a not in ref.aliases for a in extra.aliases()):
        ref = with_aliases(ref, extra.aliases())
        with publishing(store, [ref], [store.read_manifest(ref.manifest)]):
            link_aliases(store, ref.aliases, ref.manifest)  # before the ref names them (see record_model)
            RefIndex(store).write(ref)
    link_aliases(store, ref.aliases, ref.manifest)
    return ref


PUBLISH_NOTE = "publish"


@contextmanager
def publishing(store: Store, refs: Iterable[Ref], manifests: Iterable[Manifest] = ()) -> Iterator[None]:
    """Leave a note naming the refs' handles and aliases in tmp while their refs and view links change."""
    refs = list(refs)
    note = store.tmp / unique_name(PUBLISH_NOTE)
    body = json.dumps([{"handle": r.handle, "aliases": list(r.aliases)} for r in refs])
    try:
        note.write_text(body)
    except OSError as exc:
        raise disk_error(exc, store.tmp) from None
    try:
        yield
        for manifest in manifests:
            make_whole(store, manifest)
    except BaseException:
        settle(store, refs)  # failed half-way (a full disk, a racing prune): what the next run would do
        raise
    finally:
        remove_quietly(note)


def settle(store: Store, refs: Iterable[Ref]) -> None:
    """Set the view links of ``refs``' handles to what their refs on disk say (``_finish``)."""
    index = RefIndex(store)
    for ref in refs:
        try:
            _finish(store, index, ref.handle, list(ref.aliases))
        except (CachemgrError, OSError):
            pass  # verify reports what is left; the note stays for the next run only if we died


def make_whole(store: Store, manifest: Manifest) -> int:
    """After its ref is written: give back what a racing prune took of a just-published model.

    A prune that scanned before our ref existed may rename our manifest, a blob we adopted or
    our snapshot into its trash (its checks ran a moment before we touched them) and delete
    them after re-reading the refs, just before our ref appears. Once the ref is written no
    later prune takes them, so now: the manifest is written again if it is gone, blobs are
    linked back from the snapshot (its files are hard links to the same inodes), and a missing
    snapshot is rebuilt from the blobs. Returns how many blobs were put back.
    """
    digest = store.write_manifest(manifest)
    snapshot = store.snapshot_path(digest)
    back = 0
    for f in manifest.files:
        if store.has_blob(f.sha256):
            continue
        try:
            store.blob_path(f.sha256).parent.mkdir(exist_ok=True)
            os.link(snapshot / f.path, store.blob_path(f.sha256))
            back += 1
        except FileExistsError:
            continue
        except OSError:
            continue  # no snapshot file either: verify reports it, repair re-fetches
    if not snapshot.is_dir() and all(store.has_blob(f.sha256) for f in manifest.files):
        store.materialize(manifest)
    return back


def finish_dead_publishes(store: Store) -> list[str]:
    """Undo what runs that died on this host left half-published; returns the handles seen.

    A handle with a ref gets its view links set to what the ref says (the ref is written
    last, so a half-done update goes back to the old model). A new handle whose ref was never
    written loses the view links it got, unless another ref owns the alias.
    """
    healed: list[str] = []
    try:
        entries = [e for e in os.scandir(store.tmp) if e.name.startswith(PUBLISH_NOTE + ".")]
    except FileNotFoundError:
        return healed
    index = RefIndex(store)
    for entry in entries:
        owner = owner_of(entry.name)
        if owner is None or owner[0] != host_tag() or pid_alive(owner[1]):
            continue
        try:
            notes = json.loads(Path(entry.path).read_bytes())
            for item in notes:
                _finish(store, index, str(item["handle"]), [str(a) for a in item["aliases"]])
                healed.append(str(item["handle"]))
        except (CachemgrError, OSError, ValueError, TypeError, KeyError):
            pass  # verify reports what is left (another user's store: theirs to finish)
        try:
            remove_quietly(Path(entry.path))
        except OSError:
            pass
    return healed


def _finish(store: Store, index: RefIndex, handle: str, aliases: list[str]) -> None:
    ref = index.read(handle)
    if ref is not None:
        relink(store, ref)
        return
    for alias in aliases:
        owner = index.canonical_for(alias)
        other = index.read(owner) if owner is not None else None
        if other is not None:
            relink(store, other)
            continue
        entry = store.view_entry(alias)
        if entry.is_symlink():
            entry.unlink(missing_ok=True)
            entry.with_name(f"{entry.name}.descriptor.txt").unlink(missing_ok=True)
