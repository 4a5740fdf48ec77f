"""The summary of ``bench_resolve_latency.py``: the load children's runs reduced to percentiles,
rates, CPU and ratios per ``--workers`` setting (the JSON ``summary``), the failed checks, and
the printed tables.
"""

from __future__ import annotations

import argparse
import statistics
from typing import TYPE_CHECKING, Any

if __package__:  # imported as benchmarks.latency_report
    from benchmarks.harness import percentiles
    from benchmarks.latency_load import FETCH_LEAD
else:  # imported by a script: benchmarks/ itself is first on sys.path
    from harness import percentiles  # type: ignore[no-redef]
    from latency_load import FETCH_LEAD  # type: ignore[no-redef]

if TYPE_CHECKING:
    from benchmarks.bench_resolve_latency import Bench

P99_TARGET_MS = 20.0


def other_load(doc: dict[str, Any]) -> float:
    """Cores that processes other than the daemon and the load generator kept busy during ``doc``'s run."""
    return float(max(0.0, doc["host_busy_seconds"] - doc["daemon_cpu_seconds"] - doc["cpu_seconds"]) / doc["seconds"])


def by_process(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Latencies and connections of ``runs`` split by the process that served them."""
    groups: dict[str, list[float]] = {}
    conns: dict[str, int] = {}
    for r in runs:
        for pid, lat in r["latencies_by_pid"].items():
            kind = "unknown" if pid == "0" else "primary" if int(pid) == r["primary_pid"] else "workers"
            groups.setdefault(kind, []).extend(lat)
            conns[kind] = conns.get(kind, 0) + r["connections_by_pid"].get(pid, 0)
    return {kind: {"connections": conns.get(kind, 0), "requests": len(lat),
                   **{k: v for k, v in percentiles(lat).items() if k in ("p50", "p99", "max")}}
            for kind, lat in groups.items()}


def phase_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in runs for x in r["latencies_ms"]]
    stats = percentiles(lat)
    n = len(runs[0]["latencies_ms"])
    rps = [len(r["latencies_ms"]) / r["seconds"] for r in runs]
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v

    def per_request_us(key: str) -> float:
        return float(statistics.median(r[key] / max(1, len(r["latencies_ms"])) * 1e6 for r in runs))

    return {
        "latency_ms": stats,
        "requests": len(lat),
        "requests_per_round": n,
        "rps_median": statistics.median(rps),
        "rps_per_round": rps,
        "daemon_cpu_per_s": statistics.median(r["daemon_cpu_seconds"] / r["seconds"] for r in runs),
        "daemon_worker_cpu_per_s": statistics.median(r["daemon_worker_cpu_seconds"] / r["seconds"] for r in runs),
        "loadgen_cpu_per_s": statistics.median(r["cpu_seconds"] / r["seconds"] for r in runs),
        "daemon_cpu_us_per_request": per_request_us("daemon_cpu_seconds"),
        "loadgen_cpu_us_per_request": per_request_us("cpu_seconds"),
        "by_process": by_process(runs),
        "statuses": statuses,
        "bad_bodies": sum(r["bad_bodies"] for r in runs),
        "other_load_cores_max": max(other_load(r) for r in runs),
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _split(p: dict[str, Any]) -> str:
    """How the connections and requests of a phase spread over the primary and the workers."""
    parts = [f"{kind} {v['connections']} conns/{v['requests']} reqs p99 {v.get('p99', 0):.2f} ms"
             for kind, v in sorted(p["by_process"].items())]
    return "; ".join(parts)


def print_setting(label: str, s: dict[str, Any], args: argparse.Namespace) -> None:
    mode = "fresh connection per request" if args.fresh_connections else "keep-alive"
    print(f"=== --workers {label}: {s['processes']} process(es), primary {s['pid']}, workers {s['workers']} ===")
    for title, key in ((f"{args.concurrency} concurrent clients", "concurrent"), ("1 client (serial)", "serial")):
        if key not in s:
            continue
        h, r = s[key]["health"], s[key]["resolve"]
        print(f"{title}, {args.client} client, {mode}: {r['requests']} resolves / {h['requests']} health requests")
        rows = [("", "resolve", "health", "ratio")]
        for p in ("p50", "p95", "p99", "max"):
            a, b = r["latency_ms"][p], h["latency_ms"][p]
            rows.append((f"{p} ms", f"{a:.2f}", f"{b:.2f}", _fmt_ratio(_ratio(a, b))))
        rows.append(("requests/s (median)", f"{r['rps_median']:.0f}", f"{h['rps_median']:.0f}",
                     _fmt_ratio(_ratio(r["rps_median"], h["rps_median"]))))
        rows.append(("daemon CPU us/request", f"{r['daemon_cpu_us_per_request']:.0f}",
                     f"{h['daemon_cpu_us_per_request']:.0f}",
                     _fmt_ratio(_ratio(r["daemon_cpu_us_per_request"], h["daemon_cpu_us_per_request"]))))
        rows.append(("daemon CPU (cores)", f"{r['daemon_cpu_per_s']:.2f}", f"{h['daemon_cpu_per_s']:.2f}", ""))
        rows.append(("  of which workers", f"{r['daemon_worker_cpu_per_s']:.2f}",
                     f"{h['daemon_worker_cpu_per_s']:.2f}", ""))
        rows.append(("load generator CPU (cores)", f"{r['loadgen_cpu_per_s']:.2f}",
                     f"{h['loadgen_cpu_per_s']:.2f}", ""))
        width = max(len(x[0]) for x in rows)
        for a0, a1, a2, a3 in rows:
            print(f"  {a0:<{width}}  {a1:>9}  {a2:>9}  {a3:>6}")
        print(f"  resolve served by: {_split(r)}")
    if s["open_loop"]:
        print(f"open loop: {args.concurrency} clients on a fixed schedule, latency from when each request was due")
        orows = [("offered req/s", "resolve p50", "p99", "max", "health p50", "p99", "max", "achieved")]
        for rate, phases in s["open_loop"].items():
            r, h = phases["resolve"], phases["health"]
            orows.append((rate, *(f"{r['latency_ms'][k]:.2f}" for k in ("p50", "p99", "max")),
                         *(f"{h['latency_ms'][k]:.2f}" for k in ("p50", "p99", "max")),
                         f"{r['rps_median']:.0f}/{h['rps_median']:.0f}"))
        for row in orows:
            print("  " + "  ".join(f"{x:>11}" for x in row))
    fetch = s.get("fetch") or {}
    for mode, f in fetch.get("modes", {}).items():
        lat = f["hits"]["latency_ms"]
        load = (f"{args.concurrency} closed-loop clients" if mode == "closed_loop"
                else f"{args.concurrency} clients open loop at {f['rate']:g} req/s")
        print(f"during a fetch of {fetch['archive_mib']:.0f} MiB, {load} ({f['rounds']} round(s); the fetch took "
              f"{', '.join(f'{x:.1f}' for x in f['fetch_seconds'])} s): {f['hits']['requests']} hit resolves")
        print(f"  p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms, "
              f"{f['hits']['rps_median']:.0f} req/s, daemon {f['hits']['daemon_cpu_per_s']:.2f} cores "
              f"(workers {f['hits']['daemon_worker_cpu_per_s']:.2f}), generator {f['hits']['loadgen_cpu_per_s']:.2f}")
        print(f"  served by: {_split(f['hits'])}")
        b = f["before"]
        if b.get("n"):
            print(f"  the {FETCH_LEAD:g} s before the fetch, same daemon and load: {b['n']} hits, "
                  f"p50 {b['p50']:.2f} ms p99 {b['p99']:.2f} ms max {b['max']:.2f} ms")


def print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    settings: dict[str, Any] = summary["by_workers"]
    base = args.workers[0]

    def target(ms: float) -> str:
        return f"{ms:.2f} ms ({'OK' if ms < P99_TARGET_MS else 'MISSED'})"

    print(f"resolve p99 under {args.concurrency} closed-loop clients (target < {P99_TARGET_MS:.0f} ms): "
          + ", ".join(f"workers={k} {target(v['concurrent']['resolve']['latency_ms']['p99'])}"
                      for k, v in settings.items()))
    for rate in next(iter(settings.values()))["open_loop"]:
        print(f"resolve p99 at {rate} req/s offered: " + ", ".join(
            f"workers={k} {target(v['open_loop'][rate]['resolve']['latency_ms']['p99'])}" for k, v in settings.items()))
    for mode in next(iter(settings.values())).get("fetch", {}).get("modes", {}):
        def during(v: dict[str, Any], _mode: str = mode) -> str:
            f = v["fetch"]["modes"][_mode]
            p99, calm = f["hits"]["latency_ms"]["p99"], f["before"].get("p99")
            vs = f", x{p99 / calm:.1f} the p99 of the {FETCH_LEAD:g} s before it" if calm else ""
            return f"{target(p99)[:-1]}{vs})"

        load = "closed loop" if mode == "closed_loop" else f"open loop {args.fetch_rate:g} req/s"
        print(f"hit resolve p99 during a fetch, {load}: "
              + ", ".join(f"workers={k} {during(v)}" for k, v in settings.items()))
    for other, r in summary["ratios"].items():
        line = (f"ratio workers={other} / workers={base}: closed-loop resolve p99 {_fmt_ratio(r['resolve_p99'])}, "
                f"rps {_fmt_ratio(r['resolve_rps'])}; health p99 {_fmt_ratio(r['health_p99'])}, "
                f"rps {_fmt_ratio(r['health_rps'])}")
        for rate, x in r["open_loop_resolve_p99"].items():
            line += f"; open loop {rate}/s resolve p99 {_fmt_ratio(x)}"
        print(line)
        for mode, x in r.get("fetch", {}).items():
            load = "closed loop" if mode == "closed_loop" else f"open loop {args.fetch_rate:g} req/s"
            print(f"ratio workers={other} / workers={base} during a fetch, {load}: "
                  f"hit p99 {_fmt_ratio(x['hits_p99'])}, hit p50 {_fmt_ratio(x['hits_p50'])}, "
                  f"hit rps {_fmt_ratio(x['hits_rps'])}, fetch time {_fmt_ratio(x['fetch_seconds'])}")
    if summary["other_load_cores_max"] > 0.3 or summary["phases_started_busy"]:
        print(f"WARNING: other processes kept up to {summary['other_load_cores_max']:.1f} cores busy; "
              f"{summary['phases_started_busy']} phases started on a busy machine: the timings are noisy")


def _dig(doc: dict[str, Any], keys: tuple[str, ...]) -> float:
    value: Any = doc
    for k in keys:
        value = value[k]
    return float(value)


def summarize(b: Bench, archive_mib: float) -> dict[str, Any]:
    args = b.args
    per: dict[str, Any] = {}
    for label in args.workers:
        results = b.results[label]
        s: dict[str, Any] = {key: {ep: phase_summary(runs) for ep, runs in phases.items()}
                             for key, phases in results.items() if all(phases.values())}
        s["open_loop"] = {rate: {ep: phase_summary(runs) for ep, runs in phases.items()}
                          for rate, phases in b.open_loop[label].items()}
        if b.fetches[label]:
            s["fetch"] = {"archive_mib": archive_mib, "modes": {
                mode: {"rounds": len(runs), "rate": runs[0].get("rate", 0.0), "hits": phase_summary(runs),
                       "before": percentiles([x for r in runs for x in r["before_latencies_ms"]]),
                       "fetch_seconds": [(r["fetch"] or {}).get("seconds", 0.0) for r in runs]}
                for mode, runs in b.fetches[label].items()}}
        cr, ch = s["concurrent"]["resolve"], s["concurrent"]["health"]
        s["ratio_p99"] = _ratio(cr["latency_ms"]["p99"], ch["latency_ms"]["p99"])
        s["ratio_p50"] = _ratio(cr["latency_ms"]["p50"], ch["latency_ms"]["p50"])
        s["ratio_rps"] = _ratio(cr["rps_median"], ch["rps_median"])
        s["p99_ok"] = cr["latency_ms"]["p99"] < P99_TARGET_MS
        s.update(b.info.get(label, {}))
        per[label] = s
    base = per[args.workers[0]]
    ratios: dict[str, Any] = {}
    for label in args.workers[1:]:
        s = per[label]

        def rel(*keys: str, _s: dict[str, Any] = s) -> float | None:
            return _ratio(_dig(_s, keys), _dig(base, keys))

        r: dict[str, Any] = {
            "resolve_p99": rel("concurrent", "resolve", "latency_ms", "p99"),
            "resolve_p50": rel("concurrent", "resolve", "latency_ms", "p50"),
            "resolve_rps": rel("concurrent", "resolve", "rps_median"),
            "health_p99": rel("concurrent", "health", "latency_ms", "p99"),
            "health_rps": rel("concurrent", "health", "rps_median"),
            "open_loop_resolve_p99": {rate: rel("open_loop", rate, "resolve", "latency_ms", "p99")
                                      for rate in s["open_loop"]},
        }
        if "fetch" in s and "fetch" in base:
            r["fetch"] = {mode: {
                "hits_p99": rel("fetch", "modes", mode, "hits", "latency_ms", "p99"),
                "hits_p50": rel("fetch", "modes", mode, "hits", "latency_ms", "p50"),
                "hits_rps": rel("fetch", "modes", mode, "hits", "rps_median"),
                "fetch_seconds": _ratio(statistics.median(f["fetch_seconds"]),
                                        statistics.median(base["fetch"]["modes"][mode]["fetch_seconds"]))}
                for mode, f in s["fetch"]["modes"].items()}
        ratios[label] = r
    phases = [p for s in per.values() for k in ("concurrent", "serial") if k in s for p in s[k].values()]
    phases += [p for s in per.values() for ph in s["open_loop"].values() for p in ph.values()]
    phases += [f["hits"] for s in per.values() for f in s.get("fetch", {}).get("modes", {}).values()]
    for p in phases:
        p["latency_ms"] = {k: round(v, 4) for k, v in p["latency_ms"].items()}
    for s in per.values():
        for f in s.get("fetch", {}).get("modes", {}).values():
            f["before"] = {k: round(v, 4) for k, v in f["before"].items()}
    return {"by_workers": per, "baseline": args.workers[0], "ratios": ratios, "p99_target_ms": P99_TARGET_MS,
            "other_load_cores_max": max(p["other_load_cores_max"] for p in phases),
            "phases_started_busy": b.busy_starts, "quiet_wait_s": b.gate.waited}


def failures(summary: dict[str, Any]) -> list[str]:
    out = []
    for label, s in summary["by_workers"].items():
        named = [(k, s[k]) for k in ("concurrent", "serial") if k in s]
        named += [(f"open loop {r}", ph) for r, ph in s["open_loop"].items()]
        named += [(f"during a fetch, {mode}", {"resolve": f["hits"]})
                  for mode, f in s.get("fetch", {}).get("modes", {}).items()]
        out += [f"workers={label} {k} {ep}: statuses {p['statuses']}, {p['bad_bodies']} bad bodies"
                for k, phases in named for ep, p in phases.items()
                if set(p["statuses"]) != {"200"} or p["bad_bodies"]]
    return out
