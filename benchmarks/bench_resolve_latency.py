"""Latency of ``POST /v1/resolve`` on cache hits under 200 concurrent clients, vs ``GET /v1/health``,
for several daemon ``--workers`` settings in the same run, also while the daemon ingests a fetch.

    python benchmarks/bench_resolve_latency.py [--workers 1,2] [--concurrency 200] [--requests 50]
        [--rounds 3] [--no-fetch-phase] [--json]

Builds (once, cached in ``--workdir``) a few tiny SavedModels (``tests/support/models.py:
build_mymul``), ``cachemgr add``s them to a fresh store under ``https://tfhub.dev/bench/mymul-N/1``,
and starts one ``cachemgr daemon --workers X`` (offline) per ``--workers`` setting, all on that
store, each on its own Unix socket. A separate load-generator process then runs
``--concurrency`` asyncio clients at once, each sending ``--requests`` sequential requests,
cycling over several hit handles (canonical and trailing-slash forms), and times every request.
``--client raw`` (default) speaks HTTP/1.1 over ``asyncio.open_unix_connection`` with prebuilt
requests, which costs the generator far less CPU than ``--client aiohttp``
(``aiohttp.UnixConnector``): on 2 cores the generator competes with the daemon for CPU.
Connections are kept alive unless ``--fresh-connections`` (what ``cachemgr.client.daemon_client.call`` does);
a kept-alive raw connection first asks ``/v1/health`` (untimed) which process serves it, so the
figures are also split between the primary and the workers.

Each round measures ``health`` (the floor: aiohttp routing + JSON response, nothing else) and
``resolve`` against each daemon in turn, the order of the daemons and of the endpoints
alternating between rounds, so that machine noise hits all settings alike. Reported per
setting: p50/p95/p99/max latency over all rounds, requests/s (median over rounds), the CPU the
daemon (primary + workers, read from /proc inside the timed window) and the generator used per
second of load, and the ratio resolve/health; then resolve p99 per setting against the target
(p99 < 20 ms) and the ratios p99(X)/p99(first setting) and rps(X)/rps(first setting). A short
serial run (one client) gives each endpoint's service time without queueing.

With N closed-loop clients, latency ~ N / throughput (Little's law): the p99 under 200 clients
mostly measures the daemon's throughput; the serial run shows the per-request cost. So the
script also runs the same 200 clients open loop at fixed offered rates (``--rates``, requests/s
over all clients, ``--rate-seconds`` each): there a request's latency counts from when it was due,
which is what a p99 target means for clients that resolve at their own pace.

Fetch phase (skip with ``--no-fetch-phase``): per setting and ``--fetch-rounds``, a fresh store
with the tiny models added and a daemon that is *not* offline; the generator then asks it to
resolve an uncached ~200 MB model (bench_pull's cached archive, served from a separate process
on 127.0.0.1) and, meanwhile, runs the 200 closed-loop clients on hits until that resolve
answers (at most ``--fetch-max-requests`` per client). With one process the ingest (hashing,
decompression threads) competes with answering hits for the GIL; workers answer hits elsewhere,
which pays only where there are cores to spare (on 2 cores shared with the generator it did not).

Exit status: 0 when every request answered 200 (resolves with ``fetched: false``, the fetches
with ``fetched: true``) and each daemon ran the workers asked for, 1 otherwise, 2 when a child failed.

This module runs the daemons and the phases; the load generator is ``latency_load.py`` (the child
process), the summary, the checks on it and the printed tables are ``latency_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.bench_resolve_latency
    from benchmarks import harness
    from benchmarks.harness.daemons import Daemon
    from benchmarks.latency_load import FETCH_LEAD, FETCH_TIMEOUT, LOAD_TIMEOUT, load_cmd
    from benchmarks.latency_report import failures, other_load, print_setting, print_summary, summarize
else:  # run as a script: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]
    from harness.daemons import Daemon  # type: ignore[no-redef]
    from latency_load import FETCH_LEAD, FETCH_TIMEOUT, LOAD_TIMEOUT, load_cmd  # type: ignore[no-redef]
    from latency_report import failures, other_load, print_setting, print_summary, summarize  # type: ignore[no-redef]

MODELS = 4


def hit_handles(models: int) -> tuple[list[str], list[str]]:
    """The handles to ``cachemgr add`` and the hit strings the clients ask for."""
    added = [f"https://tfhub.dev/bench/mymul-{i}/1" for i in range(models)]
    asked = added + [h + "/" for h in added]
    return added, asked


def expected_processes(setting: str) -> int:
    """How many processes ``--workers setting`` should run (primary included), by the daemon's own rule."""
    from cachemgr.settings import Settings, usable_cpus

    return Settings(home=Path("."), workers=None if setting == "auto" else int(setting)).worker_count(usable_cpus())


def run_load(daemon: Daemon, endpoint: str, concurrency: int, per_client: int, args: argparse.Namespace,
             env: dict[str, str], handles: list[str], rate: float = 0.0,
             fetch_handle: str | None = None) -> dict[str, Any]:
    cfg = {"sock": str(daemon.sock), "endpoint": endpoint,
           "client": "raw" if rate or fetch_handle else args.client, "concurrency": concurrency,
           "per_client": per_client, "keepalive": not args.fresh_connections, "rate": rate, "handles": handles,
           "fetch_handle": fetch_handle, "lead": FETCH_LEAD if fetch_handle else 0.0, "daemon_pid": daemon.pid}
    timeout = LOAD_TIMEOUT + 30
    try:
        proc = subprocess.run(load_cmd(cfg), capture_output=True, env=env, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:  # run() killed it
        raise harness.ChildError(f"load generator still running after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise harness.ChildError(f"load generator exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    doc["latencies_ms"] = [x for v in doc["latencies_by_pid"].values() for x in v]
    doc["primary_pid"] = daemon.pid
    doc["rate"] = rate
    return doc


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", default="1,2",
                   help="comma list of daemon --workers settings to compare (N or auto; ratios against the first)")
    p.add_argument("--concurrency", type=int, default=200, help="concurrent clients")
    p.add_argument("--requests", type=int, default=50, help="sequential requests per client per phase")
    p.add_argument("--serial", type=int, default=1000, help="requests of the one-client run (0: skip it)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each measures health and resolve on every daemon)")
    p.add_argument("--rates", default="500,1000", help="offered rates (req/s) of the open-loop runs ('' skips)")
    p.add_argument("--rate-seconds", type=float, default=4.0, help="length of each open-loop run")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="load generator HTTP client")
    p.add_argument("--fresh-connections", action="store_true", help="one connection per request")
    p.add_argument("--no-fetch-phase", dest="fetch_phase", action="store_false",
                   help="skip the hits-during-a-fetch phase (it needs the ~200 MB archive, built once)")
    p.add_argument("--fetch-rounds", type=int, default=2, help="fetches per setting and load in the fetch phase")
    p.add_argument("--fetch-rate", type=float, default=5000.0,
                   help="also fetch under an open-loop hit load at this rate (req/s; 0: closed loop only)")
    p.add_argument("--fetch-max-requests", type=int, default=3000,
                   help="at most this many requests per client while a fetch runs")
    p.add_argument("--size-mb", type=int, default=200, help="size of the fetched model (MiB of float32 weights)")
    harness.add_common_args(p, quiet_wait=30.0)
    args = p.parse_args(argv)
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        p.error("--rates is a comma-separated list of numbers")
    args.workers = [w.strip().lower() for w in args.workers.split(",") if w.strip()]
    if (not args.workers or len(set(args.workers)) != len(args.workers)
            or any(w != "auto" and not (w.isdigit() and 1 <= int(w) <= 64) for w in args.workers)):
        p.error("--workers is a comma list of distinct settings, each 1..64 or auto")
    if any(not 1 <= r <= 50_000 for r in args.rates) or not 0.5 <= args.rate_seconds <= 60:
        p.error("--rates values must be 1..50000 and --rate-seconds 0.5..60")
    if not (1 <= args.concurrency <= 2000 and 1 <= args.requests <= 1000 and 1 <= args.rounds <= 20
            and 0 <= args.serial <= 20000):
        p.error("--concurrency 1..2000, --requests 1..1000, --rounds 1..20, --serial 0..20000")
    if not (1 <= args.fetch_rounds <= 10 and 1 <= args.fetch_max_requests <= 100_000 and args.size_mb >= 1
            and 0 <= args.fetch_rate <= 50_000):
        p.error("--fetch-rounds 1..10, --fetch-max-requests 1..100000, --size-mb >= 1, --fetch-rate 0..50000")
    return args


class Bench:
    """The state of one run: the settings' daemons, their results, the problems seen."""

    def __init__(self, args: argparse.Namespace, workdir: Path, env: dict[str, str], asked: list[str]) -> None:
        self.args = args
        self.workdir = workdir
        self.env = env
        self.asked = asked
        self.gate = harness.QuietGate(args.quiet_wait)
        self.busy_starts = 0
        self.problems: list[str] = []
        self.results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
            w: {"concurrent": {"health": [], "resolve": []}, "serial": {"health": [], "resolve": []}}
            for w in args.workers}
        self.open_loop: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {w: {} for w in args.workers}
        self.fetches: dict[str, dict[str, list[dict[str, Any]]]] = {w: {} for w in args.workers}
        self.info: dict[str, dict[str, Any]] = {}

    def timed(self, daemon: Daemon, endpoint: str, concurrency: int, per_client: int, rate: float = 0.0,
              fetch_handle: str | None = None) -> dict[str, Any]:
        self.busy_starts += not self.gate.wait()
        return run_load(daemon, endpoint, concurrency, per_client, self.args, self.env, self.asked, rate,
                        fetch_handle)

    def check_workers(self, label: str, daemon: Daemon, where: str) -> dict[str, Any]:
        """The daemon's status; a problem unless it runs the processes ``--workers label`` asks for."""
        status, doc = daemon.call("GET", "/v1/status")
        if status != 200:
            self.problems.append(f"{where} workers={label}: /v1/status said {status} {doc}")
            return {}
        want = expected_processes(label) - 1
        workers, children = doc.get("workers") or [], daemon.children()
        if len(workers) != want or not set(workers) <= set(children):
            self.problems.append(f"{where} workers={label}: /v1/status lists workers {workers} (want {want}), "
                                 f"the daemon's child processes are {children}")
        return doc

    def warm(self, daemon: Daemon, label: str) -> None:
        for h in self.asked:  # every handle resolves as a hit, and the view links exist before timing
            status, doc = daemon.call("POST", "/v1/resolve", {"handle": h})
            if status != 200 or doc.get("fetched") is not False:
                raise harness.ChildError(f"warm-up resolve of {h} on workers={label} said {status} {doc}")
        for endpoint in ("health", "resolve"):
            run_load(daemon, endpoint, self.args.concurrency, 2, self.args, self.env, self.asked)

    def log_run(self, what: str, label: str, doc: dict[str, Any]) -> None:
        st = harness.percentiles(doc["latencies_ms"])
        harness.log(f"{what} workers={label}: p50 {st['p50']:.2f} ms p99 {st['p99']:.2f} ms max {st['max']:.2f} ms, "
                    f"{len(doc['latencies_ms']) / doc['seconds']:.0f} req/s, daemon "
                    f"{doc['daemon_cpu_seconds'] / doc['seconds']:.2f} cores (workers "
                    f"{doc['daemon_worker_cpu_seconds'] / doc['seconds']:.2f}), generator "
                    f"{doc['cpu_seconds'] / doc['seconds']:.2f}, others {other_load(doc):.2f}, "
                    f"conns by pid {doc['connections_by_pid']}")

    def hit_phases(self, home: Path) -> None:
        """The closed-loop rounds, then the serial and open-loop runs, on one daemon per setting."""
        args = self.args
        daemons: dict[str, Daemon] = {}
        try:
            for label in args.workers:
                daemons[label] = Daemon(home, self.env, workers=label, name=f"w-{label}")
                self.warm(daemons[label], label)
                doc = self.check_workers(label, daemons[label], "hit phases")
                self.info[label] = {"pid": daemons[label].pid, "workers": doc.get("workers"),
                                    "processes": 1 + len(doc.get("workers") or [])}
                harness.log(f"workers={label}: daemon pid {daemons[label].pid}, workers {doc.get('workers')} "
                            f"on {daemons[label].sock}")
            order = list(args.workers)
            for n in range(args.rounds):
                for i, label in enumerate(order if n % 2 == 0 else order[::-1]):
                    endpoints = ("health", "resolve") if (n + i) % 2 == 0 else ("resolve", "health")
                    for endpoint in endpoints:
                        doc = self.timed(daemons[label], endpoint, args.concurrency, args.requests)
                        self.results[label]["concurrent"][endpoint].append(doc)
                        self.log_run(f"round {n} {endpoint:7} c={args.concurrency}", label, doc)
            if args.serial:
                for n, endpoint in enumerate(("health", "resolve")):
                    for label in order if n % 2 == 0 else order[::-1]:
                        doc = self.timed(daemons[label], endpoint, 1, args.serial)
                        self.results[label]["serial"][endpoint].append(doc)
                        self.log_run(f"serial {endpoint:7}", label, doc)
            for k, rate in enumerate(args.rates):
                per_client = max(1, round(rate * args.rate_seconds / args.concurrency))
                for i, label in enumerate(order if k % 2 == 0 else order[::-1]):
                    for endpoint in ("health", "resolve") if (k + i) % 2 == 0 else ("resolve", "health"):
                        doc = self.timed(daemons[label], endpoint, args.concurrency, per_client, rate)
                        self.open_loop[label].setdefault(f"{rate:g}", {})[endpoint] = [doc]
                        self.log_run(f"open loop {rate:g} req/s {endpoint:7}", label, doc)
            for label, daemon in daemons.items():
                doc = self.check_workers(label, daemon, "after the hit phases")
                self.info[label].update(hits=doc.get("hits"), misses=doc.get("misses"),
                                        worker_requests=doc.get("worker_requests"), forwarded=doc.get("forwarded"))
                if doc.get("misses"):
                    self.problems.append(f"workers={label}: the daemon counted {doc['misses']} misses (want 0)")
        finally:
            for daemon in daemons.values():
                daemon.stop()

    def fetch_phase(self, scratch: Path, added: list[str], archives: list[Path]) -> float:
        """Per setting (order alternating per round): hits while a fresh daemon fetches the big model."""
        args = self.args
        root, archive = harness.ensure_archive(self.workdir, args.size_mb, False, self.env)  # page-cached
        online = {k: v for k, v in self.env.items() if k != "CACHEMGR_OFFLINE"}
        server = harness.Server(root, online)
        url = f"http://127.0.0.1:{server.port}/{harness.URL_PATH}"
        harness.log(f"fetch phase: serving {archive} ({archive.stat().st_size / harness.MIB:.1f} MiB) at {url}")
        try:
            modes = [("closed_loop", 0.0)] + ([("open_loop", args.fetch_rate)] if args.fetch_rate else [])
            for n in range(args.fetch_rounds):
                for i, label in enumerate(args.workers if n % 2 == 0 else args.workers[::-1]):
                    for mode, rate in modes if (n + i) % 2 == 0 else modes[::-1]:
                        self.one_fetch(scratch / f"fetch-{label}-{n}-{mode}", label, n, mode, rate, url, added,
                                       archives, online)
        finally:
            server.stop()
        return archive.stat().st_size / harness.MIB

    def one_fetch(self, home: Path, label: str, n: int, mode: str, rate: float, url: str, added: list[str],
                  archives: list[Path], env: dict[str, str]) -> None:
        """A fresh store and daemon; the generator resolves ``url`` (uncached) and hits meanwhile."""
        add_models(home, added, archives, env)
        where = f"fetch round {n} {mode}"
        daemon = Daemon(home, env, workers=label)
        try:
            self.warm(daemon, label)
            before = self.check_workers(label, daemon, where)
            os.sync()  # the last fetch's store is on disk, not in dirty pages
            per_client = self.args.fetch_max_requests
            if rate:  # open loop: enough for the longest fetch the load child waits for, no more
                per_client = min(per_client, max(1, round(rate * (FETCH_LEAD + FETCH_TIMEOUT) / self.args.concurrency)))
            doc = self.timed(daemon, "resolve", self.args.concurrency, per_client, rate, fetch_handle=url)
            after = self.check_workers(label, daemon, where)
        finally:
            daemon.stop()
        self.check_fetch(f"{where} workers={label}", doc, before, after)
        self.fetches[label].setdefault(mode, []).append(doc)
        self.log_run(f"{where} ({(doc['fetch'] or {}).get('seconds', 0):.1f} s fetch) hits", label, doc)
        shutil.rmtree(home, ignore_errors=True)

    def check_fetch(self, where: str, doc: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
        f = doc["fetch"] or {}
        body = f.get("body")
        if f.get("status") != 200 or not isinstance(body, dict) or body.get("fetched") is not True:
            self.problems.append(f"{where}: the big resolve said {f.get('status')} {str(body or f)[:300]}")
        fetches = (after.get("fetches") or 0) - (before.get("fetches") or 0)
        if fetches != 1:
            self.problems.append(f"{where}: the daemon counted {fetches} fetches (want 1)")
        if max(0, (after.get("misses") or 0) - (before.get("misses") or 0)) != 1:
            self.problems.append(f"{where}: the daemon counted {after.get('misses')} misses (want 1, the fetch)")
        if doc["seconds"] < 0.9 * f.get("seconds", 0):
            self.problems.append(f"{where}: the hit load stopped after {doc['seconds']:.1f} s of the "
                                 f"{f.get('seconds', 0):.1f} s fetch (raise --fetch-max-requests)")


def add_models(home: Path, added: list[str], archives: list[Path], env: dict[str, str]) -> None:
    shutil.rmtree(home, ignore_errors=True)
    for handle, archive in zip(added, archives, strict=True):
        harness.cachemgr_add(home, handle, archive, env)


def bench(args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir, env = harness.bench_env(args.workdir, {"CACHEMGR_OFFLINE": "1"})
    models = harness.ensure_small_models(workdir, [float(i + 2) for i in range(MODELS)], env)
    archives = [a for _d, a in models]
    added, asked = hit_handles(MODELS)
    scratch = workdir / "latency"
    shutil.rmtree(scratch, ignore_errors=True)
    home = scratch / "home"
    add_models(home, added, archives, env)
    b = Bench(args, workdir, env, asked)
    archive_mib = 0.0
    try:
        b.hit_phases(home)
        if args.fetch_phase:
            archive_mib = b.fetch_phase(scratch, added, archives)
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    summary = summarize(b, archive_mib)
    summary["wall_s"] = time.monotonic() - started
    problems = b.problems + failures(summary)
    if args.json:
        print(json.dumps({"config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                     "cpus": os.cpu_count(), "handles": asked},
                          "summary": summary, "problems": problems}, indent=2))
    else:
        for label, s in summary["by_workers"].items():
            print_setting(label, s, args)
            print(f"daemon counted {s.get('hits')} hits ({s.get('worker_requests')} requests answered by workers, "
                  f"{s.get('forwarded')} forwarded to the primary), {s.get('misses')} misses")
        print_summary(summary, args)
        print(f"wall time {summary['wall_s']:.0f} s")
        for f in problems:
            print(f"  PROBLEM: {f}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    return bench(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
