"""Worker counters: our shared-memory slots against prometheus-client's multiprocess mode.

The issue: use prometheus-client and its multiprocess mode for the workers' counters if hit
CPU stays within 10% of today's. A hit increments two counters (requests and hits); this
measures both ways in the same run, in the same process, and prints the extra cost per hit
as a share of a hit's daemon CPU (``--hit-us``, from bench_resolve_latency.py: 34 us).

    python benchmarks/bench_counters.py [--hits 200000] [--repeat 5] [--hit-us 34]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hit-us", type=float, default=34.0, help="daemon CPU per hit, from bench_resolve_latency")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-counters-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "prom")  # read by prometheus-client's values
    (work / "prom").mkdir()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
    from cachemgrd.counters import SharedCounters
    from prometheus_client import Counter, values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # now that the dir is set
    requests, hits = Counter("bench_requests", "r"), Counter("bench_hits", "h")
    slot = SharedCounters(work / "counters", 8, create=True).slot(0)

    def ours() -> None:
        slot.request()
        slot.hit()

    def prometheus() -> None:
        requests.inc()
        hits.inc()

    per_hit = {}
    for name, fn in (("counters.py slots", ours), ("prometheus-client multiprocess", prometheus)):
        best = min(timeit.repeat(fn, number=args.hits, repeat=args.repeat))
        per_hit[name] = best / args.hits * 1e6
        print(f"{name:32} {per_hit[name]:.3f} us per hit (two increments, best of {args.repeat})")
    extra = per_hit["prometheus-client multiprocess"] - per_hit["counters.py slots"]
    share = extra / args.hit_us
    print(f"ratio {per_hit['prometheus-client multiprocess'] / per_hit['counters.py slots']:.1f}x; "
          f"extra {extra:.2f} us = {share:.0%} of a {args.hit_us:.0f} us hit "
          f"({'within' if share <= 0.10 else 'over'} the 10% allowed)")


if __name__ == "__main__":
    main()
