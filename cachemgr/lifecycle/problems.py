"""What verify finds: typed problem kinds, the findings, the containment they call for, the outcome.

Pure data. ``verify.py`` produces a :class:`VerifyReport` without changing the store;
``contain.py`` quarantines and takes models out of service as the report says; ``repair.py``
acts on the problems by their kinds' properties. A kind is an enum member, so a typo is an
error, not a silently unrepaired problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from cachemgr.lifecycle.scrub_state import ScrubState
from cachemgr.units import format_size, plural


class ProblemKind(StrEnum):
    """A kind of damage, and what it implies.

    ``out_of_service``: the model cannot be served (its view links and snapshot go until a repair).
    ``repairable``: fetching the bytes again can help (not so if they match their hashes yet do
    not make a model). ``local``: fixable in place, without fetching.
    """

    out_of_service: bool
    repairable: bool
    local: bool

    def __new__(cls, value: str, out_of_service: bool = False, repairable: bool = True,
                local: bool = False) -> ProblemKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.out_of_service = out_of_service
        member.repairable = repairable
        member.local = local
        return member

    BLOB_UNREADABLE = "blob_unreadable"
    BLOB_CORRUPT = "blob_corrupt", True
    BLOB_MISSING = "blob_missing", False, True, True
    MANIFEST_MISSING = "manifest_missing", True
    MANIFEST_CORRUPT = "manifest_corrupt", True
    STRUCTURE = "structure", True, False
    SNAPSHOT_MISSING = "snapshot_missing", True
    SNAPSHOT_FILE_MISSING = "snapshot_file_missing", True
    SNAPSHOT_FILE_DIFFERS = "snapshot_file_differs", True
    SNAPSHOT_EXTRA = "snapshot_extra", True
    SNAPSHOT_MODE = "snapshot_mode", False, True, True
    VIEW_MISSING = "view_missing", False, True, True
    VIEW_WRONG = "view_wrong", False, True, True
    VIEW_DANGLING = "view_dangling"
    LOAD_FAILED = "load_failed", False, False


@dataclass
class Problem:
    kind: ProblemKind
    subject: str
    message: str
    models: tuple[str, ...] = ()
    repaired: bool = False
    action: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "subject": self.subject, "message": self.message,
                "models": list(self.models), "repaired": self.repaired, "action": self.action}


@dataclass(frozen=True)
class Outcome:
    """A verify run's result: ``code`` names it (``--json``), ``exit_code`` is the documented exit status."""

    code: Literal["ok", "corruption_found", "corruption_repaired"]
    message: str

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "corruption_found": 11, "corruption_repaired": 12}[self.code]


@dataclass(frozen=True)
class Retirement:
    """A model version to take out of service: its manifest digest, why, and the aliases it serves."""

    digest: str
    reason: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class QuarantineOrder:
    """Content to move aside: a ``blob`` or a ``manifest``, named by its digest."""

    kind: Literal["blob", "manifest"]
    name: str
    reason: str


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    models: int = 0
    signatures: dict[str, list[str]] = field(default_factory=dict)
    partial: bool = False
    state: ScrubState | None = None
    seconds: float = 0.0
    repair_errors: list[str] = field(default_factory=list)
    quarantines: list[QuarantineOrder] = field(default_factory=list)
    retirements: list[Retirement] = field(default_factory=list)

    def outcome(self) -> Outcome:
        """What the run found, as a value: ``ok``, ``corruption_repaired`` or ``corruption_found``."""
        if not self.problems:
            return Outcome("ok", "")
        left = [p for p in self.problems if not p.repaired]
        if not left:
            return Outcome("corruption_repaired", f"{plural(len(self.problems), 'problem')} found and all repaired")
        hint = ("see the errors above" if self.repair_errors else
                "run `cachemgr verify --repair` to re-fetch or rebuild what is damaged")
        return Outcome("corruption_found",
                       f"{plural(len(self.problems), 'problem')} found, {len(left)} not repaired; {hint}")

    def lines(self) -> list[str]:
        out = [f"{'repaired' if p.repaired else p.kind:22} {p.subject}  {p.message}"
               + (f" [{p.action}]" if p.action else "")
               + (f"  affects: {', '.join(p.models)}" if p.models else "") for p in self.problems]
        out += [f"repair failed: {e}" for e in self.repair_errors]
        out += [f"loads: {h}  signatures: {', '.join(s) or '(none)'}" for h, s in sorted(self.signatures.items())]
        rate = round(self.bytes / self.seconds) if self.seconds > 0 else 0
        out.append(f"verified {plural(self.blobs, 'blob')} ({format_size(self.bytes)}, {format_size(rate)}/s) "
                   f"and {plural(self.models, 'model')} in {self.seconds:.1f}s")
        if self.partial and self.state is not None:
            out.append(f"partial scrub: stopped at --max-duration; the next run continues with the "
                       f"{self.state.phase} after {self.state.cursor[:16] or 'the start'}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"problems": [p.to_json() for p in self.problems], "blobs": self.blobs, "bytes": self.bytes,
                "models": self.models, "signatures": self.signatures, "partial": self.partial,
                "seconds": self.seconds, "repair_errors": self.repair_errors,
                "outcome": self.outcome().code,
                "state": self.state.to_json() if self.state else None}
