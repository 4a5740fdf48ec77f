"""Recording an ingested model: its ref (with provenance and aliases) and its view links."""

from __future__ import annotations

import time

from cachemgr.errors import StoreError
from cachemgr.handles import Handle, learned_handle
from cachemgr.ingest.unpack import IngestResult
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex, merged_aliases, with_aliases
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
    index.write(ref)
    link_aliases(store, ref.aliases, ref.manifest)
    return ref


def relink(store: Store, ref: Ref, extra: Handle | None = None) -> Ref:
    """Make sure the view answers every alias of ``ref`` (plus ``extra``'s forms).

    The snapshot is checked (and rebuilt from blobs if missing) before anything is written,
    so a model pruned meanwhile raises StoreError instead of getting its ref back.
    """
    if not store.snapshot_path(ref.manifest).is_dir():
        try:
            store.materialize(store.read_manifest(ref.manifest))
        except FileNotFoundError:
            raise StoreError(f"{ref.handle}: a blob is missing, the snapshot cannot be rebuilt; "
                             "run `cachemgr verify --repair`") from None
    if extra is not None and any(a not in ref.aliases for a in extra.aliases()):
        ref = with_aliases(ref, extra.aliases())
        RefIndex(store).write(ref)
    link_aliases(store, ref.aliases, ref.manifest)
    return ref
