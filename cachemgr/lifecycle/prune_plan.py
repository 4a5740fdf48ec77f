"""Prune planning: a pure function from a store scan and a policy to a plan.

Modelled on borg's ``prune`` (rules that each select what to drop, protected items never
selected) and huggingface_hub's ``DeleteCacheStrategy`` (a plan that says what it will
delete and how many bytes that frees, executed separately by ``prune_exec.execute_prune``).

Never selected: a model pinned by an unexpired pin; a model used, or a ref/manifest/snapshot
written, within the grace period; content a pin names by digest. Bytes are counted by blob
reference counts, so evicting a model frees only what no remaining model shares.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cachemgr.lifecycle.scan import ModelRecord, StoreScan
from cachemgr.settings import Settings
from cachemgr.units import format_age, format_size

_SERIES = re.compile(r"^(.*)/([0-9]+)/?$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PrunePolicy:
    max_size: int | None = None
    unused_for: float | None = None
    keep_versions: int | None = None
    min_free: int | None = None
    grace: float = 3600.0
    foreign_temp_grace: float = 24 * 3600.0  # temps of other hosts: we cannot see their pids
    # Content no ref names yet is exactly what a pull looks like between publishing its snapshot
    # and writing its ref: it is kept at least this long, whatever ``grace`` says.
    in_flight: float = 600.0
    # Cluster: a node silent (no heartbeat, no use) for longer than node_timeout holds nothing
    # back; a lease not renewed for lease_timeout is stale and protects nothing.
    node_timeout: float = 7 * 24 * 3600.0
    lease_timeout: float = 60.0
    # How long other nodes may see stale metadata (fs_cache_timeout); None: guessed from the
    # store's filesystem when the plan is carried out (store/fskind.py).
    fs_cache_timeout: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "unused_for": self.unused_for, "keep_versions": self.keep_versions,
                "min_free": self.min_free, "grace": self.grace}

    @staticmethod
    def from_settings(settings: Settings, *, max_size: int | None = None, unused_for: float | None = None,
                      keep_versions: int | None = None, min_free: int | None = None,
                      grace: float | None = None) -> PrunePolicy:
        """The ``prune_*`` settings, each overridden by its flag when given (the one place a policy is built)."""
        def pick(flag: Any, setting: Any) -> Any:
            return setting if flag is None else flag

        return PrunePolicy(pick(max_size, settings.prune_max_size), pick(unused_for, settings.prune_unused_for),
                           pick(keep_versions, settings.prune_keep_versions), pick(min_free, settings.prune_min_free),
                           pick(grace, settings.prune_grace), settings.temp_grace,
                           node_timeout=settings.node_timeout, lease_timeout=settings.lease_timeout,
                           fs_cache_timeout=settings.fs_cache_timeout)


@dataclass(frozen=True)
class Eviction:
    handle: str
    manifest: str
    aliases: tuple[str, ...]
    size: int  # bytes of its distinct blobs
    frees: int  # bytes this eviction frees, in plan order (0 if the content is still shared)
    last_used: float | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "manifest": self.manifest, "size": self.size, "frees": self.frees,
                "last_used": self.last_used, "reason": self.reason}


@dataclass(frozen=True)
class Protection:
    handle: str
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    taken_at: float
    now: float
    policy: PrunePolicy
    evict: tuple[Eviction, ...]
    protected: tuple[Protection, ...]
    snapshots: tuple[str, ...]
    manifests: tuple[str, ...]
    blobs: tuple[str, ...]
    temps: tuple[str, ...]
    size_before: int
    size_after: int
    unmet: tuple[str, ...] = ()
    kept_manifests: frozenset[str] = field(default=frozenset(), repr=False)
    in_flight_since: float = float("inf")  # the earliest running pull/import/fetch began then

    @property
    def horizon(self) -> float:
        """Anything written, linked or touched at or after this is in flight: execution skips it."""
        return min(self.taken_at, self.in_flight_since)

    @property
    def bytes_to_free(self) -> int:
        return self.size_before - self.size_after

    def is_empty(self) -> bool:
        return not (self.evict or self.snapshots or self.manifests or self.blobs or self.temps)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_json(),
            "evict": [e.to_json() for e in self.evict],
            "protected": [{"handle": p.handle, "reason": p.reason} for p in self.protected],
            "leftovers": {"snapshots": len(self.snapshots), "manifests": len(self.manifests),
                          "blobs": len(self.blobs), "temps": list(self.temps)},
            "size_before": self.size_before, "size_after": self.size_after,
            "bytes_to_free": self.bytes_to_free, "unmet": list(self.unmet),
        }


def series_of(handle: str) -> tuple[str, int]:
    """(model without version, version) for ``--keep-versions``; unversioned: (handle, 0)."""
    m = _SERIES.match(handle)
    return (m.group(1), int(m.group(2))) if m else (handle, 0)


class _Ledger:
    """Reference counts of manifests (by refs and roots) and blobs (by live manifests)."""

    def __init__(self, scan: StoreScan, roots: set[str]) -> None:
        self.scan = scan
        self.roots = roots
        self.sizes = scan.blob_sizes()
        self.refs = Counter(m.manifest for m in scan.models)
        self.live = set(self.refs) | roots
        self.blob_refs: Counter[str] = Counter()
        for digest in self.live:
            rec = scan.manifests.get(digest)
            if rec is not None:
                self.blob_refs.update(sha for sha, _ in rec.blobs)
        self.size = sum(self.sizes.values())
        self.dead_blobs: set[str] = set()
        self.freed = 0

    def collect_loose(self, cutoff: float, allowed: bool) -> None:
        """Blobs no live manifest names (orphans of dead manifests, or loose older than grace)."""
        if not allowed:
            return
        for sha in self.scan.blobs:
            if self.blob_refs[sha]:
                continue
            loose = self.scan.loose_blobs.get(sha)
            if loose is not None and loose[1] > cutoff:
                continue
            self._drop_blob(sha)

    def _drop_blob(self, sha: str) -> int:
        if sha in self.dead_blobs or sha not in self.sizes:
            return 0
        self.dead_blobs.add(sha)
        self.freed += self.sizes[sha]
        return self.sizes[sha]

    def evict(self, model: ModelRecord) -> int:
        self.refs[model.manifest] -= 1
        if self.refs[model.manifest] > 0 or model.manifest in self.roots:
            return 0
        self.live.discard(model.manifest)
        rec = self.scan.manifests.get(model.manifest)
        freed = 0
        for sha, _size in rec.blobs if rec is not None else ():
            self.blob_refs[sha] -= 1
            if self.blob_refs[sha] == 0:
                freed += self._drop_blob(sha)
        return freed

    def distinct_size(self, digest: str) -> int:
        rec = self.scan.manifests.get(digest)
        return sum(size for sha, size in rec.blobs if sha in self.sizes) if rec is not None else 0


def counted_use(m: ModelRecord, scan: StoreScan, policy: PrunePolicy, now: float) -> tuple[float, str] | None:
    """A model's newest use by a node that is not silent past ``node_timeout``, and that node."""
    best: tuple[float, str] | None = None
    # Only protection asks which node used it; LRU order and --unused-for look at every use.
    uses = m.uses or ((("a node", m.last_use),) if m.last_use is not None else ())  # a record without nodes
    for tag, when in uses:
        seen = max(when, scan.heartbeats.get(tag, 0.0))
        if now - seen <= policy.node_timeout and (best is None or when > best[0]):
            best = (when, tag)
    return best


def live_fetches(scan: StoreScan, policy: PrunePolicy, now: float) -> dict[str, float]:
    """Handles being fetched under a live lease by a node that counts -> when that fetch began."""
    out: dict[str, float] = {}
    for state in scan.leases:
        rec = state.record
        if state.expired(policy.lease_timeout, now):
            continue
        if rec is None:
            out.setdefault("", state.mtime)  # being written: something is in flight
        elif rec.name.startswith("fetch-"):
            out[rec.what] = min(out.get(rec.what, rec.started), rec.started)
    return out


def in_flight_start(scan: StoreScan, policy: PrunePolicy, now: float) -> float:
    """When the earliest pull, import or fetch still running began (inf: none runs).

    A running pull/import keeps a temp in tmp/ (``Store.in_flight``'s mark is made before it
    touches anything), a daemon's fetch a live lease: what was written or linked since then
    may be its work, whatever the grace period says."""
    running = [t.mtime for t in scan.temps if t.owner == "live"
               or (t.owner == "foreign" and now - t.mtime < policy.foreign_temp_grace)]
    return min([*running, *live_fetches(scan, policy, now).values()], default=float("inf"))


def _protections(scan: StoreScan, policy: PrunePolicy, now: float,
                 in_flight_since: float) -> tuple[dict[str, str], set[str]]:
    cutoff = now - policy.grace
    by_alias: dict[str, str] = {}
    for m in scan.models:
        for alias in (m.handle, *m.aliases):
            by_alias.setdefault(alias, m.handle)
    protected: dict[str, str] = {}
    roots: set[str] = set()
    for pin in scan.pins:
        if pin.expired(now):
            continue
        handle = by_alias.get(pin.handle)
        if handle is not None:
            why = f"pinned by {pin.who}" + (f" ({pin.reason})" if pin.reason else "")
            protected.setdefault(handle, why)
        if pin.digest:
            roots.add(pin.digest)
    referenced = {m.manifest for m in scan.models}
    unnamed_cutoff = now - max(policy.grace, policy.in_flight)
    fetching = live_fetches(scan, policy, now)
    # Content touched since a running pull/import began may be its work, even under a ref it
    # is about to write again (an import re-publishing a model): kept, and so its model.
    roots |= {d for d, rec in scan.manifests.items()
              if rec.mtime > (cutoff if d in referenced else unnamed_cutoff) or rec.mtime >= in_flight_since}
    roots |= {d for d, mtime in scan.snapshots.items()
              if mtime > (cutoff if d in referenced else unnamed_cutoff) or mtime >= in_flight_since}
    for m in scan.models:
        use = counted_use(m, scan, policy, now)
        if m.ref_mtime >= in_flight_since:
            protected.setdefault(m.handle, "written while a pull or import is running (in flight)")
        elif m.handle in fetching or any(a in fetching for a in m.aliases):
            protected.setdefault(m.handle, "being fetched under a live lease (in flight)")
        elif use is not None and use[0] > cutoff:
            protected.setdefault(m.handle, f"used {format_age(now - use[0])} ago by {use[1]}, within the grace period")
        elif max(m.fetched_at, m.ref_mtime) > cutoff:
            protected.setdefault(m.handle, "written within the grace period (in flight)")
        elif m.manifest in roots:
            protected.setdefault(m.handle, "its content is pinned or being written")
    return protected, roots


def plan_prune(scan: StoreScan, policy: PrunePolicy, now: float) -> PrunePlan:
    """What to delete from ``scan`` under ``policy`` at time ``now``. Pure: reads nothing else."""
    in_flight_since = in_flight_start(scan, policy, now)
    protected, roots = _protections(scan, policy, now, in_flight_since)
    ledger = _Ledger(scan, roots)
    unmet: list[str] = []
    safe = scan.unreadable_refs == 0 and all(rec.readable for rec in scan.manifests.values())
    if not safe:
        unmet.append("unreadable refs or manifests: leftovers are not collected; run `cachemgr verify --repair`")
    ledger.collect_loose(now - max(policy.grace, policy.in_flight), safe)
    size_before = ledger.size

    candidates = sorted((m for m in scan.models if m.handle not in protected),
                        key=lambda m: (m.last_activity, m.handle))
    chosen: dict[str, str] = {}
    if policy.unused_for is not None:
        for m in candidates:
            idle = now - m.last_activity
            if idle > policy.unused_for:
                chosen[m.handle] = f"unused for {format_age(idle)} (more than {format_age(policy.unused_for)})"
    if policy.keep_versions is not None:
        groups: dict[str, list[ModelRecord]] = {}
        for m in scan.models:
            groups.setdefault(series_of(m.handle)[0], []).append(m)
        for series, members in groups.items():
            members.sort(key=lambda m: series_of(m.handle)[1], reverse=True)
            for m in members[policy.keep_versions:]:
                if m.handle not in protected:
                    chosen.setdefault(m.handle, f"older than the newest {policy.keep_versions} version(s) of {series}")

    evictions: list[Eviction] = []

    def evict(m: ModelRecord, reason: str) -> None:
        size = ledger.distinct_size(m.manifest)
        evictions.append(Eviction(m.handle, m.manifest, m.aliases, size, ledger.evict(m), m.last_use, reason))

    for m in candidates:
        if m.handle in chosen:
            evict(m, chosen[m.handle])

    need_free = 0
    if policy.min_free is not None and scan.disk_free is not None:
        need_free = max(0, policy.min_free - scan.disk_free)

    def satisfied() -> bool:
        under = policy.max_size is None or size_before - ledger.freed <= policy.max_size
        return under and ledger.freed >= need_free

    for m in candidates:
        if satisfied():
            break
        if m.handle in chosen:
            continue
        goal = []
        if policy.max_size is not None and size_before - ledger.freed > policy.max_size:
            goal.append(f"--max-size {format_size(policy.max_size)}")
        if ledger.freed < need_free:
            goal.append(f"--min-free {format_size(policy.min_free or 0)}")
        used = f"last used {format_age(now - m.last_use)} ago" if m.last_use else "never used"
        evict(m, f"least recently used ({used}) to meet {' and '.join(goal)}")
    if not satisfied():
        unmet.append(f"targets not reachable: {len(protected)} model(s) are protected "
                     f"(pinned or used/written within the grace period of {format_age(policy.grace)})")

    live = ledger.live
    dead_manifests = sorted(d for d in scan.manifests if d not in live)
    dead_snapshots = sorted(d for d in scan.snapshots if d not in live and _DIGEST.match(d))
    temps = []
    for t in scan.temps:
        limit = policy.grace if t.owner == "dead" else max(policy.grace, policy.foreign_temp_grace)
        if t.owner != "live" and now - t.mtime > limit:
            temps.append(t.name)
    return PrunePlan(
        scan.taken_at, now, policy, tuple(evictions),
        tuple(Protection(h, why) for h, why in sorted(protected.items())),
        tuple(dead_snapshots) if safe else (), tuple(dead_manifests) if safe else (),
        tuple(sorted(ledger.dead_blobs)) if safe else (), tuple(sorted(temps)),
        size_before, size_before - ledger.freed if safe else size_before, tuple(unmet), frozenset(live),
        in_flight_since,
    )
