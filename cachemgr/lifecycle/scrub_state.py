"""Progress of a resumable scrub (``verify --max-duration``), kept in ``HOME/scrub-state.json``.

A pass walks the blobs in sorted order, then the models (refs) in sorted order. The cursor
is the last key fully verified, so a run that stops early is continued by the next one,
from any host. Written by unique temp + atomic rename; the last writer wins, which at worst
repeats some work.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from cachemgr.errors import NoSpaceError
from cachemgr.store.fs import atomic_write
from cachemgr.store.objects import Store

Phase = Literal["blobs", "models", "done"]


@dataclass(frozen=True)
class ScrubState:
    pass_started: float
    phase: Phase = "blobs"
    cursor: str = ""
    updated: float = 0.0
    last_complete: float | None = None
    blobs_done: int = 0
    bytes_done: int = 0
    models_done: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def advance(self, **changes: Any) -> ScrubState:
        return replace(self, updated=time.time(), **changes)


def load_state(store: Store) -> ScrubState | None:
    try:
        doc = json.loads(store.scrub_state.read_bytes())
        return ScrubState(**{k: v for k, v in doc.items() if k in ScrubState.__dataclass_fields__})
    except (FileNotFoundError, ValueError, TypeError):
        return None


def save_state(store: Store, state: ScrubState) -> None:
    """Record the progress; on a full disk the check goes on, only unresumable (it reads, not writes)."""
    try:
        atomic_write(store.scrub_state, json.dumps(state.to_json(), indent=1).encode() + b"\n", store.tmp,
                     fault=store.fault)
    except NoSpaceError:
        pass


def resume_or_start(store: Store, now: float) -> ScrubState:
    """The unfinished pass to continue, or a new pass (keeping when the last one completed)."""
    old = load_state(store)
    if old is not None and old.phase != "done":
        return old
    return ScrubState(pass_started=now, updated=now, last_complete=old.last_complete if old else None)
