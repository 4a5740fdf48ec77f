"""``cachemgr du``: per-model disk use from a store scan (pure, like prune planning).

- size: bytes of the model's distinct blobs (what it occupies, deduplicated within itself);
- unique: bytes of blobs no other model references (what evicting it alone would free);
- shared: size - unique (blobs another model also references);
- last use: newest use over every alias and host; pinned: who pinned it (unexpired pins);
- state: ``ok``, ``out_of_service``, ... with its fix (``model_state.classify``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from cachemgr.lifecycle.model_state import classify
from cachemgr.lifecycle.scan import StoreScan


@dataclass(frozen=True)
class ModelUsage:
    handle: str
    manifest: str
    size: int
    unique: int
    shared: int
    last_use: float | None
    pinned: str | None
    present: bool  # manifest readable and every blob present
    state: str = "ok"
    fix: str = ""


@dataclass(frozen=True)
class DuReport:
    models: tuple[ModelUsage, ...]
    total: int  # bytes of all blobs in the store
    blobs: int
    leftover: int  # bytes of blobs no model references

    def to_json(self) -> dict[str, Any]:
        return {"models": [asdict(m) for m in self.models], "total": self.total, "blobs": self.blobs,
                "leftover": self.leftover}


def disk_usage(scan: StoreScan, now: float) -> DuReport:
    sizes = scan.blob_sizes()
    by_alias: dict[str, str] = {}
    for m in scan.models:
        for alias in (m.handle, *m.aliases):
            by_alias.setdefault(alias, m.handle)
    pinned: dict[str, str] = {}
    for pin in scan.pins:
        handle = by_alias.get(pin.handle)
        if handle is not None and not pin.expired(now):
            pinned.setdefault(handle, pin.who)
    users: Counter[str] = Counter()  # blob -> number of models using it
    for m in scan.models:
        rec = scan.manifests.get(m.manifest)
        if rec is not None:
            users.update(sha for sha, _ in rec.blobs)
    used: set[str] = set()
    out: list[ModelUsage] = []
    for m in scan.models:
        rec = scan.manifests.get(m.manifest)
        blobs = rec.blobs if rec is not None else ()
        used.update(sha for sha, _ in blobs)
        size = sum(sizes.get(sha, 0) for sha, _ in blobs)
        unique = sum(sizes.get(sha, 0) for sha, _ in blobs if users[sha] == 1)
        present = rec is not None and rec.readable and all(sha in sizes for sha, _ in blobs)
        state = classify(m.handle, manifest=rec is not None, readable=rec is not None and rec.readable,
                         snapshot=m.manifest in scan.snapshots,
                         missing_blobs=sum(1 for sha, _ in blobs if sha not in scan.blobs))
        out.append(ModelUsage(m.handle, m.manifest, size, unique, size - unique, m.last_use,
                              pinned.get(m.handle), present, state.code, state.fix))
    total = sum(sizes.values())
    leftover = sum(size for sha, size in sizes.items() if sha not in used)
    return DuReport(tuple(out), total, len(sizes), leftover)
