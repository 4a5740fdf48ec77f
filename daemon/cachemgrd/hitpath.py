"""The read-only hit path of resolve, shared by the primary daemon process and its workers.

A *clean hit* needs no write at all: the ref exists, its snapshot is on disk, the view link
for the exact string asked exists and the string is one of the ref's aliases. Anything else
(a miss, a pruned snapshot, a missing link) is for the primary's slow path, which may fetch
or relink. Answers are reused for ``RECENT_TTL`` seconds, the view link still checked each
time, and each answer's JSON body is rendered once.

Every check runs in a store thread (``StoreIO``), never on the event loop; the last-use record
is written by the background thread, and a hit waits for it at most ``USE_WAIT`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cachemgr.store.aio import StoreIO
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.store.usage import record_handle_use

RECENT_TTL = 2.0  # seconds a resolved answer is reused (the view link is still checked each time)
RECENT_MAX = 10_000  # answers kept before the table is emptied
# How long an answer waits for its last-use record: long enough for a healthy disk (so that a
# prune right after a hit sees the use), short enough that a hung mount barely delays a hit.
USE_WAIT = 0.2


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


async def mark_used(io: StoreIO, home: Path, alias: str, node: str | None) -> None:
    """Record a use of ``alias`` by ``node`` in the background thread, waiting for it at most USE_WAIT
    seconds (not at all while a record for it is still pending: the store is slow, and that one will do)."""
    future = io.later(f"use {alias}", record_handle_use, home, alias, None, node, what=f"record use of {alias}")
    if future is not None:
        await asyncio.wait([asyncio.wrap_future(future)], timeout=USE_WAIT)


class HitPath:
    """Clean hits answered from the store without writing anything but the last-use record."""

    def __init__(self, store: Store, index: RefIndex, node_id: str | None, io: StoreIO) -> None:
        self.store = store
        self.index = index
        self.node_id = node_id
        self.io = io
        self._recent: dict[str, tuple[float, Resolved]] = {}

    def _recent_hit(self, text: str) -> Resolved | None:
        """An answer given less than RECENT_TTL ago whose view link still exists (in a thread)."""
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

    def find(self, text: str) -> Resolved | None:
        """The clean hit for ``text``, or None; reads the store, so it runs in a store thread."""
        hit = self._recent_hit(text)
        if hit is not None:
            return hit
        ref = self.index.lookup(text)
        if ref is None or text not in ref.aliases:
            return None
        snapshot = self.store.snapshot_path(ref.manifest)
        view = self.store.view_entry(text)
        if not snapshot.is_dir() or not os.path.lexists(view):
            return None
        hit = Resolved(ref, text, str(view), str(snapshot), False)
        self.remember(text, hit)
        return hit

    async def lookup(self, text: str) -> Resolved | None:
        """A clean hit for ``text`` (recording its use), or None when the slow path is needed."""
        hit = await self.io.run(self.find, text, what=f"look up {text}")
        if hit is not None:
            await mark_used(self.io, self.store.home, text, self.node_id)
        return hit
