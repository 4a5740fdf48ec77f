"""The view: ``view/<sha1(alias)>`` links that tensorflow_hub resolves as cache hits.

Each link is relative (``../snapshots/<digest>``) so the tree still works when the
store is mounted elsewhere. A ``<sha1>.descriptor.txt`` mirrors what hub writes.

Re-linking an alias that already points at the right target is a no-op: one ``readlink``,
no rename. On a shared store many nodes re-publish the same model; renames of their own temp
links onto one ``view/<sha1>`` at once are what GlusterFS's DHT left unanswered (issue 11).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

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
        current = _link_target(entry)
        if current is _HUB_DIR:
            skipped.append(alias)  # a real directory that plain tensorflow_hub downloaded
            continue
        if current != target:
            atomic_symlink(target, entry, store.tmp, fault=store.fault)
        descriptor = entry.with_name(f"{entry.name}.descriptor.txt")
        if not descriptor.exists():
            text = (
                f"Module: {alias}\nManaged by: cachemgr\nSnapshot: sha256:{digest}\n"
                f"Linked: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n"
            )
            atomic_write(descriptor, text.encode(), store.tmp, fault=store.fault)
    return skipped


_HUB_DIR = "\0hub directory"  # no link target can hold a NUL


def _link_target(entry: Path) -> str | None:
    """What the link ``entry`` points at; None if there is none (or a file), _HUB_DIR for a directory."""
    try:
        return os.readlink(entry)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL and entry.is_dir():  # not a link: a directory hub downloaded
            return _HUB_DIR
        return None
