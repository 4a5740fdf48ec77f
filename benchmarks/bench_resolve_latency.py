"""Latency of ``POST /v1/resolve`` on cache hits under 200 concurrent clients, vs ``GET /v1/health``.

    python benchmarks/bench_resolve_latency.py [--concurrency 200] [--requests 25] [--rounds 3] [--json]

Builds (once, cached in ``--workdir``) a few tiny SavedModels (``tests/support/models.py:
build_mymul``), ``cachemgr add``s them to a fresh store under ``https://tfhub.dev/bench/mymul-N/1``,
and starts ``cachemgr daemon`` (offline) on a Unix socket. A separate load-generator process
then runs ``--concurrency`` asyncio clients at once, each sending ``--requests`` sequential
requests, cycling over several hit handles (canonical and trailing-slash forms), and times
every request. ``--client raw`` (default) speaks HTTP/1.1 over ``asyncio.open_unix_connection``
with prebuilt requests, which costs the generator far less CPU than ``--client aiohttp``
(``aiohttp.UnixConnector``): on 2 cores the generator competes with the daemon for CPU.
Connections are kept alive unless ``--fresh-connections`` (what ``cachemgr.client.call`` does).

Each round measures ``health`` (the floor: aiohttp routing + JSON response, nothing else) and
``resolve`` (order alternating). Reported: p50/p95/p99/max latency over all rounds, requests/s
(median over rounds), the CPU the daemon and the generator used per second of load (a daemon
near 1.0 is saturated: it is single-threaded), and the ratio resolve/health. A short serial run
(one client) gives each endpoint's service time without queueing. Target: resolve p99 < 20 ms.

With N closed-loop clients, latency ~ N / throughput (Little's law): the p99 under 200 clients
mostly measures the daemon's throughput; the serial run shows the per-request cost. So the
script also runs the same 200 clients open loop at fixed offered rates (``--rates``, requests/s
over all clients, ``--rate-seconds`` each): there a request's latency counts from when it was due,
which is what a p99 target means for clients that resolve at their own pace.

Exit status: 0 when every request answered 200 (resolves with ``fetched: false``), 1 otherwise,
2 when a child failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks.bench_common import Daemon, bp, ensure_small_models, percentiles
except ImportError:  # run as a script: benchmarks/ itself is first on sys.path
    from bench_common import Daemon, bp, ensure_small_models, percentiles  # type: ignore[no-redef]

P99_TARGET_MS = 20.0
MODELS = 4
LOAD_TIMEOUT = 180.0


def hit_handles(models: int) -> tuple[list[str], list[str]]:
    """The handles to ``cachemgr add`` and the hit strings the clients ask for."""
    added = [f"https://tfhub.dev/bench/mymul-{i}/1" for i in range(models)]
    asked = added + [h + "/" for h in added]
    return added, asked


# ---------------------------------------------------------------------------------------
# The load generator (a child process)
# ---------------------------------------------------------------------------------------
def _request_bytes(endpoint: str, handle: str, keepalive: bool) -> bytes:
    conn = "keep-alive" if keepalive else "close"
    if endpoint == "health":
        return f"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n\r\n".encode()
    body = json.dumps({"handle": handle}).encode()
    head = (f"POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _load(sock: str, endpoint: str, client: str, concurrency: int, per_client: int, keepalive: bool,
                handles: list[str], rate: float) -> dict[str, Any]:
    """Closed loop (``rate`` 0: each client sends its next request when the last answered) or open
    loop (``rate`` requests/s over all clients, each on a fixed schedule; a request's latency counts
    from when it was due, so a daemon that falls behind is not hidden by the clients waiting)."""
    import asyncio

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    checked: list[dict[str, Any]] = []
    start_event = asyncio.Event()
    start_at = [0.0]
    ready_count = [0]
    interval = concurrency / rate if rate > 0 else 0.0

    def record(status: int, body: bytes, seconds: float, check: bool) -> None:
        latencies.append(seconds)
        statuses[status] = statuses.get(status, 0) + 1
        if check:
            checked.append(json.loads(body))

    async def raw_client(i: int) -> None:
        reqs = [_request_bytes(endpoint, handles[(i + j) % len(handles)], keepalive) for j in range(per_client)]
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        for attempt in range(50):  # keep-alive: connect before the clock (retry while the backlog is full)
            if not keepalive:
                break
            try:
                reader, writer = await asyncio.open_unix_connection(sock)
                break
            except OSError:
                await asyncio.sleep(0.01 * (attempt + 1))
        ready_count[0] += 1
        await start_event.wait()
        for j, req in enumerate(reqs):
            if interval:
                due = start_at[0] + (i / concurrency + j) * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = due
            else:
                t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_unix_connection(sock)
                assert reader is not None
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                fields = (ln.partition(":") for ln in lines[1:])
                length = next(int(v) for k, _, v in fields if k.lower() == "content-length")
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError):
                # A full listen backlog: connect() fails with EAGAIN at once (asyncio then reports
                # ENOTCONN on the first send). Counted as status 0; the client opens a new connection.
                status, body = 0, b""
                if writer is not None:
                    writer.close()
                reader = writer = None
            seconds = time.perf_counter() - t0
            if not keepalive and writer is not None:
                writer.close()
                reader = writer = None
            record(status, body, seconds, j == 0 and status == 200)
        if writer is not None:
            writer.close()

    async def aiohttp_client(i: int, session: Any) -> None:
        await start_event.wait()
        for j in range(per_client):
            handle = handles[(i + j) % len(handles)]
            t0 = time.perf_counter()
            if endpoint == "health":
                async with session.get("http://localhost/v1/health") as resp:
                    body = await resp.read()
            else:
                async with session.post("http://localhost/v1/resolve", json={"handle": handle}) as resp:
                    body = await resp.read()
            record(resp.status, body, time.perf_counter() - t0, j == 0)

    session = None
    if client == "aiohttp":
        import aiohttp

        conn = aiohttp.UnixConnector(path=sock, limit=concurrency, force_close=not keepalive)
        session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60))
        tasks = [asyncio.ensure_future(aiohttp_client(i, session)) for i in range(concurrency)]
    else:
        tasks = [asyncio.ensure_future(raw_client(i)) for i in range(concurrency)]
    for _ in range(200):  # every task built its requests (and connected) and waits on the event
        await asyncio.sleep(0.01)
        if ready_count[0] >= concurrency or client == "aiohttp":
            break
    cpu, start = bp.cpu_seconds(), time.perf_counter()
    start_at[0] = start
    start_event.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), LOAD_TIMEOUT)
    finally:
        if session is not None:
            await session.close()
    seconds = time.perf_counter() - start
    cpu = bp.cpu_seconds() - cpu
    bad = [d for d in checked if endpoint == "resolve" and (d.get("fetched") is not False or "path" not in d)]
    return {"latencies_ms": [round(x * 1000, 4) for x in latencies], "seconds": seconds, "cpu_seconds": cpu,
            "statuses": {str(k): v for k, v in statuses.items()}, "bad_bodies": len(bad),
            "sample": checked[0] if checked else None}


def child_load(sock: str, endpoint: str, client: str, concurrency: str, per_client: str, keepalive: str,
               rate: str, handles_json: str) -> None:
    import asyncio

    doc = asyncio.run(_load(sock, endpoint, client, int(concurrency), int(per_client), keepalive == "1",
                            json.loads(handles_json), float(rate)))
    bp.emit(doc)


def self_cmd(kind: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", kind, *args]


# ---------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------
def other_load(doc: dict[str, Any]) -> float:
    """Cores that processes other than the daemon and the load generator kept busy during ``doc``'s run."""
    return float(max(0.0, doc["host_busy_seconds"] - doc["daemon_cpu_seconds"] - doc["cpu_seconds"]) / doc["seconds"])


def run_load(daemon: Daemon, endpoint: str, concurrency: int, per_client: int, args: argparse.Namespace,
             env: dict[str, str], handles: list[str], rate: float = 0.0) -> dict[str, Any]:
    cmd = self_cmd("load", str(daemon.socket), endpoint, "raw" if rate else args.client, str(concurrency),
                   str(per_client), "0" if args.fresh_connections else "1", str(rate), json.dumps(handles))
    busy = bp.host_busy_seconds()
    daemon_cpu = daemon.cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=LOAD_TIMEOUT + 30, check=False)
    daemon_cpu = daemon.cpu_seconds() - daemon_cpu
    busy = bp.host_busy_seconds() - busy
    if proc.returncode != 0:
        raise bp.ChildError(f"load generator exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    doc["daemon_cpu_seconds"] = daemon_cpu
    doc["host_busy_seconds"] = busy
    return doc


def phase_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in runs for x in r["latencies_ms"]]
    stats = percentiles(lat)
    n = len(runs[0]["latencies_ms"])
    rps = [len(r["latencies_ms"]) / r["seconds"] for r in runs]
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "latency_ms": stats,
        "requests": len(lat),
        "requests_per_round": n,
        "rps_median": statistics.median(rps),
        "rps_per_round": rps,
        "daemon_cpu_per_s": statistics.median(r["daemon_cpu_seconds"] / r["seconds"] for r in runs),
        "loadgen_cpu_per_s": statistics.median(r["cpu_seconds"] / r["seconds"] for r in runs),
        "daemon_cpu_us_per_request": statistics.median(
            r["daemon_cpu_seconds"] / len(r["latencies_ms"]) * 1e6 for r in runs),
        "loadgen_cpu_us_per_request": statistics.median(r["cpu_seconds"] / len(r["latencies_ms"]) * 1e6 for r in runs),
        "statuses": statuses,
        "bad_bodies": sum(r["bad_bodies"] for r in runs),
        "other_load_cores_max": max(other_load(r) for r in runs),
    }


def print_table(s: dict[str, Any], args: argparse.Namespace) -> None:
    mode = "fresh connection per request" if args.fresh_connections else "keep-alive"
    for label, key in ((f"{args.concurrency} concurrent clients", "concurrent"), ("1 client (serial)", "serial")):
        h, r = s[key]["health"], s[key]["resolve"]
        print(f"{label}, {args.client} client, {mode}: {r['requests']} resolves / {h['requests']} health requests")
        rows = [("", "resolve", "health", "ratio")]
        for p in ("p50", "p95", "p99", "max"):
            a, b = r["latency_ms"][p], h["latency_ms"][p]
            rows.append((f"{p} ms", f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}"))
        rows.append(("requests/s (median)", f"{r['rps_median']:.0f}", f"{h['rps_median']:.0f}",
                     f"{r['rps_median'] / h['rps_median']:.2f}"))
        rows.append(("daemon CPU us/request", f"{r['daemon_cpu_us_per_request']:.0f}",
                     f"{h['daemon_cpu_us_per_request']:.0f}",
                     f"{r['daemon_cpu_us_per_request'] / h['daemon_cpu_us_per_request']:.2f}"))
        rows.append(("daemon CPU (cores)", f"{r['daemon_cpu_per_s']:.2f}", f"{h['daemon_cpu_per_s']:.2f}", ""))
        rows.append(("load generator CPU (cores)", f"{r['loadgen_cpu_per_s']:.2f}",
                     f"{h['loadgen_cpu_per_s']:.2f}", ""))
        width = max(len(x[0]) for x in rows)
        for a0, a1, a2, a3 in rows:
            print(f"  {a0:<{width}}  {a1:>9}  {a2:>9}  {a3:>6}")
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
    c = s["concurrent"]["resolve"]["latency_ms"]["p99"]
    ok = "OK" if c < P99_TARGET_MS else "MISSED"
    print(f"resolve p99 under {args.concurrency} closed-loop clients: {c:.2f} ms "
          f"(target < {P99_TARGET_MS:.0f} ms: {ok})")
    for rate, phases in s["open_loop"].items():
        c = phases["resolve"]["latency_ms"]["p99"]
        ok = "OK" if c < P99_TARGET_MS else "MISSED"
        print(f"resolve p99 at {rate} req/s offered: {c:.2f} ms (target < {P99_TARGET_MS:.0f} ms: {ok})")
    if s["other_load_cores_max"] > 0.3 or s["phases_started_busy"]:
        print(f"WARNING: other processes kept up to {s['other_load_cores_max']:.1f} cores busy; "
              f"{s['phases_started_busy']} phases started on a busy machine: the timings are noisy")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--concurrency", type=int, default=200, help="concurrent clients")
    p.add_argument("--requests", type=int, default=25, help="sequential requests per client per phase")
    p.add_argument("--serial", type=int, default=1000, help="requests of the one-client run (0: skip it)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each measures health and resolve)")
    p.add_argument("--rates", default="500,1000", help="offered rates (req/s) of the open-loop runs ('' skips)")
    p.add_argument("--rate-seconds", type=float, default=5.0, help="length of each open-loop run")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="load generator HTTP client")
    p.add_argument("--fresh-connections", action="store_true", help="one connection per request")
    bp.add_common_args(p, quiet_wait=30.0)
    args = p.parse_args(argv)
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        p.error("--rates is a comma-separated list of numbers")
    if any(not 1 <= r <= 50_000 for r in args.rates) or not 0.5 <= args.rate_seconds <= 60:
        p.error("--rates values must be 1..50000 and --rate-seconds 0.5..60")
    if not (1 <= args.concurrency <= 2000 and 1 <= args.requests <= 1000 and 1 <= args.rounds <= 20
            and 0 <= args.serial <= 20000):
        p.error("--concurrency 1..2000, --requests 1..1000, --rounds 1..20, --serial 0..20000")
    return args


def bench(args: argparse.Namespace) -> int:
    workdir, env = bp.bench_env(args.workdir, {"CACHEMGR_OFFLINE": "1"})
    models = ensure_small_models(workdir, [float(i + 2) for i in range(MODELS)], env)
    added, asked = hit_handles(MODELS)
    scratch = workdir / "latency"
    shutil.rmtree(scratch, ignore_errors=True)
    home = scratch / "home"
    for handle, (_model, archive) in zip(added, models, strict=True):
        bp.run_child([*bp.cachemgr_cmd(), "--home", str(home), "add", handle, str(archive)], env, timed=False)
    gate = bp.QuietGate(args.quiet_wait)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        "concurrent": {"health": [], "resolve": []}, "serial": {"health": [], "resolve": []}}
    open_loop: dict[str, dict[str, list[dict[str, Any]]]] = {}
    busy_starts = 0
    try:
        daemon = Daemon(home, env)
    except bp.ChildError as exc:
        bp.log(str(exc))
        return 2
    try:
        for h in asked:  # every handle resolves as a hit, and the view links exist before timing
            status, doc = daemon.call("POST", "/v1/resolve", {"handle": h})
            if status != 200 or doc.get("fetched") is not False:
                raise bp.ChildError(f"warm-up resolve of {h} said {status} {doc}")
        bp.log(f"daemon pid {daemon.pid} on {daemon.socket}; warm-up")
        for endpoint in ("health", "resolve"):
            run_load(daemon, endpoint, args.concurrency, 2, args, env, asked)
        for n in range(args.rounds):
            for endpoint in ("health", "resolve") if n % 2 == 0 else ("resolve", "health"):
                busy_starts += not gate.wait()
                doc = run_load(daemon, endpoint, args.concurrency, args.requests, args, env, asked)
                results["concurrent"][endpoint].append(doc)
                st = percentiles(doc["latencies_ms"])
                bp.log(f"round {n} {endpoint:7} c={args.concurrency}: p50 {st['p50']:.2f} ms p99 {st['p99']:.2f} ms "
                       f"max {st['max']:.2f} ms, {len(doc['latencies_ms']) / doc['seconds']:.0f} req/s, daemon "
                       f"{doc['daemon_cpu_seconds'] / doc['seconds']:.2f} cores, generator "
                       f"{doc['cpu_seconds'] / doc['seconds']:.2f} cores, others {other_load(doc):.2f} cores")
        if args.serial:
            for endpoint in ("health", "resolve"):
                busy_starts += not gate.wait()
                doc = run_load(daemon, endpoint, 1, args.serial, args, env, asked)
                results["serial"][endpoint].append(doc)
                st = percentiles(doc["latencies_ms"])
                bp.log(f"serial {endpoint:7}: p50 {st['p50']:.3f} ms p99 {st['p99']:.3f} ms, "
                       f"{len(doc['latencies_ms']) / doc['seconds']:.0f} req/s, others {other_load(doc):.2f} cores")
        for rate in args.rates:
            per_client = max(1, round(rate * args.rate_seconds / args.concurrency))
            for endpoint in ("health", "resolve"):
                busy_starts += not gate.wait()
                doc = run_load(daemon, endpoint, args.concurrency, per_client, args, env, asked, rate)
                open_loop.setdefault(f"{rate:g}", {})[endpoint] = [doc]
                st = percentiles(doc["latencies_ms"])
                bp.log(f"open loop {rate:g} req/s {endpoint:7}: p50 {st['p50']:.2f} ms p99 {st['p99']:.2f} ms "
                       f"max {st['max']:.2f} ms, achieved {len(doc['latencies_ms']) / doc['seconds']:.0f} req/s, "
                       f"others {other_load(doc):.2f} cores")
        status, daemon_status = daemon.call("GET", "/v1/status")
    except bp.ChildError as exc:
        bp.log(str(exc))
        return 2
    finally:
        daemon.stop()
    summary: dict[str, Any] = {
        key: {ep: phase_summary(runs) for ep, runs in phases.items() if runs}
        for key, phases in results.items() if all(phases.values())
    }
    summary["open_loop"] = {rate: {ep: phase_summary(runs) for ep, runs in phases.items()}
                            for rate, phases in open_loop.items()}
    if "serial" not in summary:
        summary["serial"] = summary["concurrent"]  # --serial 0: print the concurrent figures twice
    cr, ch = summary["concurrent"]["resolve"], summary["concurrent"]["health"]
    summary["ratio_p99"] = cr["latency_ms"]["p99"] / ch["latency_ms"]["p99"]
    summary["ratio_p50"] = cr["latency_ms"]["p50"] / ch["latency_ms"]["p50"]
    summary["ratio_rps"] = cr["rps_median"] / ch["rps_median"]
    summary["p99_target_ms"] = P99_TARGET_MS
    summary["p99_ok"] = cr["latency_ms"]["p99"] < P99_TARGET_MS
    everything = [p for k in ("concurrent", "serial") for p in summary[k].values()]
    everything += [p for phases in summary["open_loop"].values() for p in phases.values()]
    summary["other_load_cores_max"] = max(p["other_load_cores_max"] for p in everything)
    summary["phases_started_busy"] = busy_starts
    summary["daemon_hits"] = daemon_status.get("hits") if status == 200 else None
    summary["daemon_misses"] = daemon_status.get("misses") if status == 200 else None
    failures = [f"{k} {ep}: statuses {p['statuses']}, {p['bad_bodies']} bad bodies"
                for k, phases in [("concurrent", summary["concurrent"]), ("serial", summary["serial"]),
                                  *((f"open loop {r}", ph) for r, ph in summary["open_loop"].items())]
                for ep, p in phases.items() if set(p["statuses"]) != {"200"} or p["bad_bodies"]]
    if summary["daemon_misses"]:
        failures.append(f"the daemon counted {summary['daemon_misses']} misses (want 0)")
    if args.json:
        for p in everything:
            p["latency_ms"] = {key: round(v, 4) for key, v in p["latency_ms"].items()}
        print(json.dumps({"config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                     "cpus": os.cpu_count(), "handles": asked},
                          "summary": summary, "problems": failures}, indent=2))
    else:
        print_table(summary, args)
        print(f"daemon counted {summary['daemon_hits']} hits, {summary['daemon_misses']} misses")
        for f in failures:
            print(f"  PROBLEM: {f}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        if kind != "load":
            raise SystemExit(f"unknown child {kind}")
        child_load(*rest)
        return 0
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
