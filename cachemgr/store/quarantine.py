"""Quarantine: corrupt store content is moved aside at once and never served again.

``quarantine/<kind>.<name>.<host>.<pid>.<uuid>`` holds the moved item (a blob, a manifest or a
whole snapshot tree) with a ``.json`` note saying why and when. A model whose content is
quarantined loses its view links (so tensorflow_hub misses instead of loading bad bytes) and
its snapshot (so ``cachemgr path`` and the daemon have nothing to hand out) until a repair.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cachemgr.store.fs import atomic_write, disk_error, unique_name
from cachemgr.store.objects import Store


def quarantine(store: Store, path: Path, kind: str, name: str, reason: str) -> Path | None:
    """Move ``path`` into quarantine (atomic rename); None if it is already gone."""
    qdir = store.quarantine
    try:
        qdir.mkdir(exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, qdir) from None
    dest = qdir / unique_name(f"{kind}-{name[:64]}")
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise disk_error(exc, dest) from None
    note = {"kind": kind, "name": name, "reason": reason, "when": time.time(), "from": str(path)}
    atomic_write(dest.with_name(dest.name + ".json"), json.dumps(note, indent=1).encode() + b"\n", store.tmp,
                 fault=store.fault)
    return dest


def take_out_of_service(store: Store, digest: str, aliases: tuple[str, ...], reason: str) -> None:
    """Remove the view links of ``aliases`` that point at ``digest`` and quarantine its snapshot."""
    target = store.view_target(digest)
    for alias in aliases:
        link = store.view_entry(alias)
        try:
            if os.readlink(link) == target:
                os.unlink(link)
        except OSError:
            continue
    quarantine(store, store.snapshot_path(digest), "snapshot", digest, reason)
