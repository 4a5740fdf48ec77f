"""``cachemgr nodes``: the nodes seen in a shared store, from a scan (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachemgr.lifecycle.prune_plan import PrunePolicy
from cachemgr.lifecycle.scan import StoreScan
from cachemgr.store.usage import tag_of


@dataclass(frozen=True)
class NodeRow:
    node: str  # the node's tag as it appears in file names
    heartbeat: float | None  # its last heartbeat record (None: it never wrote one, e.g. a shim only)
    last_seen: float  # newest of heartbeat and any use it recorded
    silent: bool  # silent for longer than node_timeout: holds nothing back from prune
    leases: tuple[str, ...]  # live leases it holds: "fetch <handle>", "prune"
    used: tuple[str, ...]  # models it used within the prune grace period

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "heartbeat": self.heartbeat, "last_seen": self.last_seen,
                "silent": self.silent, "leases": list(self.leases), "used_within_grace": list(self.used)}


def nodes_report(scan: StoreScan, policy: PrunePolicy, now: float) -> list[NodeRow]:
    seen: dict[str, float] = dict(scan.heartbeats)
    used: dict[str, set[str]] = {}
    for m in scan.models:
        for tag, when in m.uses:
            seen[tag] = max(seen.get(tag, 0.0), when)
            if now - when <= policy.grace:
                used.setdefault(tag, set()).add(m.handle)
    leases: dict[str, list[str]] = {}
    for state in scan.leases:
        rec = state.record
        if rec is None or state.expired(policy.lease_timeout, now):
            continue
        tag = tag_of(rec.node)
        seen[tag] = max(seen.get(tag, 0.0), rec.renewed)
        kind = "fetch" if rec.name.startswith("fetch-") else rec.name
        leases.setdefault(tag, []).append(f"{kind} {rec.what}" if kind == "fetch" else kind)
    rows = []
    for tag in sorted(seen):
        silent = now - seen[tag] > policy.node_timeout
        rows.append(NodeRow(tag, scan.heartbeats.get(tag), seen[tag], silent,
                            () if silent else tuple(sorted(leases.get(tag, []))),
                            () if silent else tuple(sorted(used.get(tag, set())))))
    return rows
