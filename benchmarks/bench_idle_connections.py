"""Hit latency while idle TCP connections are held open (issue 10: hits keep their latency).

One daemon, one run: resolve hits (the shim's request, one connection each, on the Unix socket)
timed with no idle connections, then with ``--idle`` TCP connections held open, alternately for
``--rounds`` rounds; p50 and p99 of each, and their ratio.

The idle connections each bring one request (``/v1/health``, so the daemon has surely accepted
them) and then stay open, sending nothing, as idle keep-alive clients do. The daemon's limits stay
as shipped, but for ``client_timeout``, raised to 10 min so that the daemon keeps the idle
connections through the run (at the default 30 s it closes them sooner, which is the front door at
work, not what this measures). ``max_peer_connections`` keeps its default (64): the connections
come from several loopback addresses (127.0.0.2, 127.0.0.3, ...), at most 63 from each.

    python benchmarks/bench_idle_connections.py [--idle 500] [--hits 2000] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import time
from typing import Any

if __package__:  # imported as benchmarks.bench_idle_connections
    from benchmarks import harness
    from benchmarks.harness.daemons import Daemon
else:  # run as python benchmarks/bench_idle_connections.py
    import harness  # type: ignore[no-redef]
    from harness.daemons import Daemon  # type: ignore[no-redef]

HANDLE = "https://tfhub.dev/bench/idle/1"
PER_ADDRESS = 63  # under the default max_peer_connections (64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hold_idle(port: int, count: int) -> list[http.client.HTTPConnection]:
    """``count`` TCP connections, each answered once, then held open and silent."""
    held = []
    for i in range(count):
        source = f"127.0.0.{2 + i // PER_ADDRESS}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        conn.request("GET", "/v1/health")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise harness.ChildError(f"idle connection {i} from {source}: status {resp.status}")
        held.append(conn)
    return held


def still_open(held: list[http.client.HTTPConnection]) -> int:
    """How many of ``held`` the daemon has not closed (a closed one reads EOF at once)."""
    count = 0
    for conn in held:
        sock = conn.sock
        if sock is None:
            continue
        sock.setblocking(False)
        try:
            if sock.recv(1) != b"":
                count += 1
        except BlockingIOError:
            count += 1
        except OSError:
            pass
        finally:
            sock.setblocking(True)
    return count


def time_hits(sock: str, hits: int) -> list[float]:
    from cachemgr.client.daemon_client import call

    out = []
    for _ in range(hits):
        start = time.perf_counter()
        status, doc = call(sock, "POST", "/v1/resolve", {"handle": HANDLE}, timeout=30)
        out.append((time.perf_counter() - start) * 1000)
        if status != 200 or doc.get("fetched"):
            raise harness.ChildError(f"resolve was not a hit: {status} {doc}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=500, help="idle TCP connections held open")
    ap.add_argument("--hits", type=int, default=1000, help="timed resolve hits per phase and round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of (0 idle, N idle), interleaved against drift")
    harness.add_common_args(ap, quiet_wait=20.0)
    args = ap.parse_args()
    workdir, env = harness.bench_env(args.workdir)
    ((_model, archive),) = harness.ensure_small_models(workdir, [3.0], env)
    home = workdir / "idle-home"
    shutil.rmtree(home, ignore_errors=True)
    harness.cachemgr_add(home, HANDLE, archive, env)
    port = free_port()
    denv = {**env, "CACHEMGR_LISTEN": f"127.0.0.1:{port}", "CACHEMGR_CLIENT_TIMEOUT": "10m"}
    daemon = Daemon(home, denv, workers="1")
    gate = harness.QuietGate(args.quiet_wait)
    idle_name = f"{args.idle} idle"
    phases: dict[str, list[float]] = {"0 idle": [], idle_name: []}
    cpu = {"0 idle": 0.0, idle_name: 0.0}  # the daemon's CPU seconds spent in each phase
    round_ratios = []
    survived = []

    def phase(name: str) -> float:
        gate.wait()
        before = daemon.cpu_seconds()
        times = time_hits(str(daemon.sock), args.hits)
        cpu[name] += daemon.cpu_seconds() - before
        phases[name] += times
        return float(harness.percentiles(times)["p50"])

    try:
        time_hits(str(daemon.sock), 200)  # warm up: the hit path's recent-answers table, the page cache
        for _ in range(args.rounds):
            base_p50 = phase("0 idle")
            held = hold_idle(port, args.idle)
            try:
                round_ratios.append(phase(idle_name) / base_p50)
                survived.append(still_open(held))
            finally:
                for conn in held:
                    conn.close()
            time.sleep(0.5)  # let the daemon see the closes before the next 0-idle phase
    finally:
        daemon.stop()
    stats = {name: harness.percentiles(v) for name, v in phases.items()}
    base, loaded = stats["0 idle"], stats[idle_name]
    cpu_us = {name: cpu[name] / len(phases[name]) * 1e6 for name in phases}
    doc: dict[str, Any] = {
        "idle": args.idle, "hits_per_phase": args.hits, "rounds": args.rounds, "stats_ms": stats,
        "ratio_p50": loaded["p50"] / base["p50"], "ratio_p99": loaded["p99"] / base["p99"],
        "round_p50_ratios": [round(r, 2) for r in round_ratios], "daemon_cpu_us_per_hit": cpu_us,
        "idle_still_open": survived, "quiet_wait_used": round(gate.waited, 1),
    }
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"resolve hits on the Unix socket, {args.rounds} rounds x {args.hits} per phase, one daemon process")
    for name, s in stats.items():
        print(f"  {name:>9}: p50 {s['p50']:.3f} ms  p99 {s['p99']:.3f} ms  max {s['max']:.2f} ms  (n={s['n']}); "
              f"daemon CPU {cpu_us[name]:.0f} us per hit")
    print(f"ratio {idle_name} / 0 idle: p50 {doc['ratio_p50']:.2f}, p99 {doc['ratio_p99']:.2f} "
          f"(per round p50: {doc['round_p50_ratios']}), CPU per hit {cpu_us[idle_name] / cpu_us['0 idle']:.2f}; "
          f"idle connections still open at the end of each round: {survived} of {args.idle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
