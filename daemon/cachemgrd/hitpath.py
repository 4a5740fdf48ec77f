"""The read-only hit path of resolve, shared by the primary daemon process and its workers.

A *clean hit* needs no write at all: the ref exists, its snapshot is on disk, the view link
for the exact string asked exists and the string is one of the ref's aliases. Anything else
(a miss, a pruned snapshot, a missing link) is for the primary's slow path, which may fetch
or relink. Answers are reused for ``RECENT_TTL`` seconds, the view link still checked each
time, and each answer's JSON body is rendered once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.store.usage import record_handle_use

RECENT_TTL = 2.0  # seconds a resolved answer is reused (the view link is still checked each time)
RECENT_MAX = 10_000  # answers kept before the table is emptied


@dataclass(frozen=True)
class Resolved:
    ref: Ref
    asked: str
    view: str
    path: str
    fetched: bool

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.asked, "canonical": self.ref.handle, "manifest": self.ref.manifest,
                "path": self.path, "view": self.view, "fetched": self.fetched}

    @cached_property
    def body(self) -> bytes:
        """The JSON answer, rendered once (hits are answered many times over)."""
        return json.dumps(self.to_json()).encode()


class HitPath:
    """Clean hits answered from the store without writing anything but the last-use record."""

    def __init__(self, store: Store, index: RefIndex) -> None:
        self.store = store
        self.index = index
        self._recent: dict[str, tuple[float, Resolved]] = {}

    def recent(self, text: str) -> Resolved | None:
        """An answer given less than RECENT_TTL ago whose view link still exists."""
        cached = self._recent.get(text)
        if cached is not None and time.monotonic() - cached[0] < RECENT_TTL and os.path.exists(cached[1].view):
            return cached[1]
        return None

    def remember(self, text: str, resolved: Resolved) -> None:
        if len(self._recent) >= RECENT_MAX:
            self._recent.clear()
        # A fetched answer is remembered as the hit that every later request is.
        hit = resolved if not resolved.fetched else Resolved(resolved.ref, resolved.asked, resolved.view,
                                                             resolved.path, False)
        self._recent[text] = (time.monotonic(), hit)

    def lookup(self, text: str) -> Resolved | None:
        """A clean hit for ``text`` (recording its use), or None when the slow path is needed."""
        hit = self.recent(text)
        if hit is not None:
            return hit
        ref = self.index.lookup(text)
        if ref is None or text not in ref.aliases:
            return None
        snapshot = self.store.snapshot_path(ref.manifest)
        view = self.store.view_entry(text)
        if not snapshot.is_dir() or not os.path.lexists(view):
            return None
        record_handle_use(self.store.home, text)
        hit = Resolved(ref, text, str(view), str(snapshot), False)
        self.remember(text, hit)
        return hit
