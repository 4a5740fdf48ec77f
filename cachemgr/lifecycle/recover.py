"""Undoing what dead runs left half-done, the one way every command and the daemon do it.

A run killed mid-publish leaves a ``tmp/publish.*`` note naming the handles whose ref and view
links it was updating; a prune killed mid-way leaves its trash. Whatever opens a store to work
in it first puts these back (the CLI before each command, ``cli/util.with_store``; the daemon
at start-up, in a store thread, before it serves), then may collect the dead runs' temps:
in that order, since the notes and the trash are temps too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cachemgr.ingest.publish import finish_dead_publishes
from cachemgr.lifecycle.prune_undo import roll_back_dead_prunes
from cachemgr.settings import Settings
from cachemgr.store.fs import clean_stale_temps
from cachemgr.store.objects import Store


@dataclass(frozen=True)
class Recovery:
    """What ``recover_dead_runs`` did."""

    published: list[str] = field(default_factory=list)  # handles whose half-done update was finished or undone
    restored: list[str] = field(default_factory=list)  # what dead prunes' trash gave back
    collected: list[Path] = field(default_factory=list)  # stale temps removed

    def __bool__(self) -> bool:
        return bool(self.published or self.restored or self.collected)


def recover_dead_runs(settings: Settings, store: Store, *, collect_temps: bool = False) -> Recovery:
    """Finish or undo dead runs' half-published updates, roll back dead prunes' trash, and with
    ``collect_temps`` then remove the stale temps of dead runs. Blocking: a thread's work."""
    published = finish_dead_publishes(store)  # a dead run's half-done ref/view update, before its temps go
    restored = roll_back_dead_prunes(settings, store)  # a dead prune's trash: what refs need goes back
    collected = clean_stale_temps(store.tmp, settings.temp_grace) if collect_temps else []
    return Recovery(published, restored, collected)
