"""A test hook: crash (or fail) at the Nth write or rename of the store's crash-safe primitives.

``fault_at`` (``CACHEMGR_FAULT_AT``, e.g. ``rename:3``, ``write:2``, ``rename:1:eio``) is for
crash tests only: a random ``kill -9`` can miss the narrow windows between one atomic step
and the next, this cannot. ``write:N`` stops the Nth ``atomic_write`` half-way through writing
its temp; ``rename:N`` stops just before the Nth atomic rename (``atomic_write`` and
``atomic_symlink``), with its temp complete. The default action is ``os._exit(FAULT_EXIT)``,
as abrupt as ``kill -9`` (no ``finally``, no cleanup); ``eio`` raises an I/O error instead, to
exercise the error paths.

The fault is a value, not process-wide state: the CLI builds it from ``settings.fault_at`` for
the store it opens (``cli/util.with_store`` sets ``Store.fault``), and the primitives are handed
it (``fault=store.fault``); nothing else arms one, and nothing reads the environment here.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from cachemgr.setting_values import FAULT_SPEC

FAULT_EXIT = 86


@dataclass
class Fault:
    kind: str
    nth: int
    action: str = "exit"
    seen: dict[str, int] = field(default_factory=dict)

    def step(self, kind: str) -> bool:
        """Count one ``kind`` step; True when it is the one to fail."""
        self.seen[kind] = self.seen.get(kind, 0) + 1
        return kind == self.kind and self.seen[kind] == self.nth

    def fire(self, where: Path | str) -> None:
        if self.action == "eio":
            raise OSError(errno.EIO, f"injected fault ({self.kind}:{self.nth})", str(where))
        os._exit(FAULT_EXIT)


def parse_spec(spec: str) -> Fault | None:
    """The fault a ``fault_at`` value names, or None if it is not one."""
    match = FAULT_SPEC.match(spec)
    if match is None:
        return None
    return Fault(match.group(1), int(match.group(2)), match.group(3) or "exit")


def from_setting(spec: str | None) -> Fault | None:
    """The fault ``settings.fault_at`` names (None when unset: no hook)."""
    return parse_spec(spec) if spec else None


def check(fault: Fault | None, kind: str) -> Fault | None:
    """Count a ``kind`` step of ``fault``'s run; the fault to fire now, if this is it."""
    return fault if fault is not None and fault.step(kind) else None
