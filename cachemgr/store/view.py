"""The view: ``view/<sha1(alias)>`` links that tensorflow_hub resolves as cache hits.

Each link is relative (``../snapshots/<digest>``) so the tree still works when the
store is mounted elsewhere. A ``<sha1>.descriptor.txt`` mirrors what hub writes.
"""

from __future__ import annotations

import os
import time

from cachemgr.store.fs import atomic_symlink, atomic_write
from cachemgr.store.objects import Store
from cachemgr.store.usage import hub_key

__all__ = ["hub_key", "link_aliases"]


def link_aliases(store: Store, aliases: tuple[str, ...], digest: str) -> list[str]:
    """Point every alias at ``snapshots/<digest>``; returns aliases that hub owns (skipped)."""
    target = store.view_target(digest)
    skipped: list[str] = []
    for alias in aliases:
        entry = store.view_entry(alias)
        if entry.is_dir() and not entry.is_symlink():
            skipped.append(alias)  # a real directory that plain tensorflow_hub downloaded
            continue
        if not (entry.is_symlink() and os.readlink(entry) == target):
            atomic_symlink(target, entry, store.tmp)
        descriptor = entry.with_name(f"{entry.name}.descriptor.txt")
        if not descriptor.exists():
            text = (
                f"Module: {alias}\nManaged by: cachemgr\nSnapshot: sha256:{digest}\n"
                f"Linked: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n"
            )
            atomic_write(descriptor, text.encode(), store.tmp)
    return skipped

