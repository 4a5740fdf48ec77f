"""Counters that worker processes share with the primary: one shared-memory file, a slot each.

Each worker increments only its own slot (one writer per 8-byte cell, so no locking), and
the primary sums the slots when it renders ``/metrics`` or ``/v1/status``. A slot keeps its
counts when its worker exits, and the next worker given that slot adds to them, so totals
never go backwards.
The file lives in the primary's private runtime directory, never in the (shared) store.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

FIELDS = ("requests", "hits", "forwarded")
_CELL = 8


class SharedCounters:
    """``slots`` rows of ``FIELDS`` int64 cells, mapped from ``path``."""

    def __init__(self, path: Path, slots: int, create: bool = False) -> None:
        self.path = path
        self.slots = slots
        size = slots * len(FIELDS) * _CELL
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._cells = memoryview(self._map).cast("q")

    def slot(self, index: int) -> CounterSlot:
        if not 0 <= index < self.slots:
            raise ValueError(f"slot {index} outside 0..{self.slots - 1}")
        return CounterSlot(self._cells, index * len(FIELDS))

    def totals(self) -> dict[str, int]:
        return {name: sum(self._cells[row * len(FIELDS) + i] for row in range(self.slots))
                for i, name in enumerate(FIELDS)}

    def close(self) -> None:
        self._cells.release()
        self._map.close()


class CounterSlot:
    """One worker's row."""

    def __init__(self, cells: memoryview, base: int) -> None:
        self._cells = cells
        self._base = base

    def request(self) -> None:
        self._cells[self._base] += 1

    def hit(self) -> None:
        self._cells[self._base + 1] += 1

    def forwarded(self) -> None:
        self._cells[self._base + 2] += 1

    def get(self, field: str) -> int:
        return int(self._cells[self._base + FIELDS.index(field)])
