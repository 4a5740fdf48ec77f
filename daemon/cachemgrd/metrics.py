"""Counters of the daemon, and the Prometheus text of them (prometheus-client's exposition)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


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
    """Prometheus text; ``workers`` are the worker processes' summed counters (counters.FIELDS).

    The exposition format is prometheus-client's; the counts are ours (counters.py): its
    multiprocess mode cost 3.2-5.0 us per hit for the two increments against 0.37-0.53 us for
    a slot (benchmarks/bench_counters.py, 4 runs), 8-13% of a hit's 34 us: not safely within 10%.
    """
    w = workers or {}
    errors = CounterMetricFamily("cachemgr_errors", "Errors by type.", labels=["type"])
    for kind, count in sorted(m.errors.items()):
        errors.add_metric([kind], count)
    families = [
        CounterMetricFamily("cachemgr_hits", "Resolve requests answered from the store.",
                            value=m.hits + w.get("hits", 0)),
        CounterMetricFamily("cachemgr_misses", "Resolve requests that needed a fetch.", value=m.misses),
        CounterMetricFamily("cachemgr_fetches", "Upstream fetches started (concurrent misses share one).",
                            value=m.fetches),
        CounterMetricFamily("cachemgr_upstream_bytes", "Bytes received from origins and upstreams.",
                            value=m.upstream_bytes),
        GaugeMetricFamily("cachemgr_inflight_fetches", "Fetches running now.", value=inflight),
        errors,
        GaugeMetricFamily("cachemgr_store_bytes", "Bytes held in blobs.", value=store_bytes),
        GaugeMetricFamily("cachemgr_store_entries", "Models (refs) in the store.", value=store_entries),
        GaugeMetricFamily("cachemgr_processes", "Processes serving the daemon's sockets (the primary and its "
                          "workers).", value=processes),
        CounterMetricFamily("cachemgr_worker_requests", "Requests that worker processes received.",
                            value=w.get("requests", 0)),
        CounterMetricFamily("cachemgr_worker_forwarded", "Requests that workers passed to the primary.",
                            value=w.get("forwarded", 0)),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


class _Families(Collector):
    """One scrape's metric families, as a collector for a throwaway registry."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)
