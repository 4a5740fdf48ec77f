"""Counters of the daemon and their Prometheus text rendering."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Metrics:
    hits: int = 0
    misses: int = 0
    fetches: int = 0
    upstream_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    requests: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def store_totals(home: Path) -> tuple[int, int]:
    """(bytes in blobs, number of refs): one scan of blobs/ and refs/."""
    total = 0
    for root, _dirs, files in os.walk(home / "blobs"):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    try:
        entries = sum(1 for n in os.listdir(home / "refs") if n.endswith(".json"))
    except FileNotFoundError:
        entries = 0
    return total, entries


def render(m: Metrics, inflight: int, store_bytes: int, store_entries: int,
           workers: dict[str, int] | None = None, processes: int = 1) -> str:
    """Prometheus text; ``workers`` are the worker processes' summed counters (counters.FIELDS)."""
    w = workers or {}
    lines = [
        "# HELP cachemgr_hits_total Resolve requests answered from the store.",
        "# TYPE cachemgr_hits_total counter",
        f"cachemgr_hits_total {m.hits + w.get('hits', 0)}",
        "# HELP cachemgr_misses_total Resolve requests that needed a fetch.",
        "# TYPE cachemgr_misses_total counter",
        f"cachemgr_misses_total {m.misses}",
        "# HELP cachemgr_fetches_total Upstream fetches started (concurrent misses share one).",
        "# TYPE cachemgr_fetches_total counter",
        f"cachemgr_fetches_total {m.fetches}",
        "# HELP cachemgr_upstream_bytes_total Bytes received from origins and upstreams.",
        "# TYPE cachemgr_upstream_bytes_total counter",
        f"cachemgr_upstream_bytes_total {m.upstream_bytes}",
        "# HELP cachemgr_inflight_fetches Fetches running now.",
        "# TYPE cachemgr_inflight_fetches gauge",
        f"cachemgr_inflight_fetches {inflight}",
        "# HELP cachemgr_errors_total Errors by type.",
        "# TYPE cachemgr_errors_total counter",
    ]
    lines += [f'cachemgr_errors_total{{type="{k}"}} {v}' for k, v in sorted(m.errors.items())]
    lines += [
        "# HELP cachemgr_store_bytes Bytes held in blobs.",
        "# TYPE cachemgr_store_bytes gauge",
        f"cachemgr_store_bytes {store_bytes}",
        "# HELP cachemgr_store_entries Models (refs) in the store.",
        "# TYPE cachemgr_store_entries gauge",
        f"cachemgr_store_entries {store_entries}",
        "# HELP cachemgr_processes Processes serving the daemon's sockets (the primary and its workers).",
        "# TYPE cachemgr_processes gauge",
        f"cachemgr_processes {processes}",
        "# HELP cachemgr_worker_requests_total Requests that worker processes received.",
        "# TYPE cachemgr_worker_requests_total counter",
        f"cachemgr_worker_requests_total {w.get('requests', 0)}",
        "# HELP cachemgr_worker_forwarded_total Requests that workers passed to the primary.",
        "# TYPE cachemgr_worker_forwarded_total counter",
        f"cachemgr_worker_forwarded_total {w.get('forwarded', 0)}",
    ]
    return "\n".join(lines) + "\n"
