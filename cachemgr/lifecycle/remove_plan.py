"""``cachemgr rm``, the pure plan: removing named models, from a scan, as a prune plan.

The plan is a :class:`~cachemgr.lifecycle.prune_plan.PrunePlan` whose evictions are exactly
the named models and whose leftovers are exactly what they alone held (their snapshot and
manifest when no other ref or live pin names it, and the blobs no other manifest uses), so
``remove_exec.execute_remove`` removes it through ``prune_exec.execute_prune``, with all of
prune's care for concurrent pulls and readers. Nothing else in the store is touched: other
leftovers are prune's business.

A model with a live pin is refused unless ``force``; then its pins go too (a pin left behind
would keep the content, and make the daemon fetch the model again). Expired pins of a removed
model go with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachemgr.errors import UsageError
from cachemgr.lifecycle.prune_plan import Eviction, Protection, PrunePlan, PrunePolicy
from cachemgr.lifecycle.scan import StoreScan
from cachemgr.store.pins import Pin

REASON = "named by cachemgr rm"


@dataclass(frozen=True)
class RemovePlan:
    prune: PrunePlan  # what execute_prune carries out
    refused: tuple[Protection, ...]  # pinned models (not forced): nothing is removed
    unpin: tuple[Pin, ...]  # pins that go with their models (forced, or expired)

    def to_json(self) -> dict[str, Any]:
        return {
            "remove": [e.to_json() for e in self.prune.evict],
            "refused": [{"handle": p.handle, "reason": p.reason} for p in self.refused],
            "unpin": [p.handle for p in self.unpin],
            "snapshots": len(self.prune.snapshots), "manifests": len(self.prune.manifests),
            "blobs": len(self.prune.blobs), "bytes_to_free": self.prune.bytes_to_free,
        }

    def refusal(self) -> UsageError | None:
        """The error a refused plan raises (one line naming each pinned model and the fix)."""
        if not self.refused:
            return None
        named = "; ".join(f"{p.handle} is {p.reason}" for p in self.refused)
        return UsageError(f"{named}; nothing was removed; `cachemgr unpin` it first, or rm --force")


def plan_remove(scan: StoreScan, handles: Sequence[str], now: float, *, force: bool = False) -> RemovePlan:
    """Remove the models with these canonical ``handles`` from ``scan``. Pure: reads nothing else."""
    by_handle = {m.handle: m for m in scan.models}
    chosen = [by_handle[h] for h in dict.fromkeys(handles) if h in by_handle]
    gone = {m.handle for m in chosen}
    by_alias: dict[str, str] = {}
    for m in scan.models:
        for alias in (m.handle, *m.aliases):
            by_alias.setdefault(alias, m.handle)
    refused: dict[str, str] = {}
    unpin: list[Pin] = []
    for pin in scan.pins:
        owner = by_alias.get(pin.handle)
        if owner not in gone:
            continue
        if pin.expired(now) or force:
            unpin.append(pin)
        else:
            refused.setdefault(owner, f"pinned by {pin.who}" + (f" ({pin.reason})" if pin.reason else ""))
    roots = {p.digest for p in scan.pins if p.digest and not p.expired(now) and p not in unpin}
    remaining = Counter(m.manifest for m in scan.models if m.handle not in gone)
    dead = list(dict.fromkeys(m.manifest for m in chosen if not remaining[m.manifest] and m.manifest not in roots))
    users: Counter[str] = Counter()
    for digest, other in scan.manifests.items():
        if digest not in dead:
            users.update(sha for sha, _ in other.blobs)
    sizes = scan.blob_sizes()
    freed: set[str] = set()
    evictions: list[Eviction] = []
    for m in chosen:
        rec = scan.manifests.get(m.manifest)
        blobs = [sha for sha, _ in rec.blobs if sha in sizes] if rec is not None else []
        frees = 0
        if m.manifest in dead:
            for sha in blobs:
                if not users[sha] and sha not in freed:
                    freed.add(sha)
                    frees += sizes[sha]
        evictions.append(Eviction(m.handle, m.manifest, m.aliases, sum(sizes[s] for s in blobs), frees,
                                  m.last_use, REASON))
    size_before = sum(sizes.values())
    size_after = size_before - sum(sizes[s] for s in freed)
    plan = PrunePlan(
        taken_at=scan.taken_at, now=now, policy=PrunePolicy(grace=0.0), evict=tuple(evictions), protected=(),
        snapshots=tuple(d for d in dead if d in scan.snapshots),
        manifests=tuple(d for d in dead if d in scan.manifests), blobs=tuple(sorted(freed)), temps=(),
        size_before=size_before, size_after=size_after, kept_manifests=frozenset(scan.manifests) - set(dead),
    )
    return RemovePlan(plan, tuple(Protection(h, why) for h, why in sorted(refused.items())), tuple(unpin))
