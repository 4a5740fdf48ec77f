"""Node fill from a site daemon, against curl, and through Squid (issue 12).

    python benchmarks/bench_fill.py [--size-mb 200] [--rounds 3] [--nodes 8] [--json]

The big model of bench_pull.py (``--size-mb`` MiB of float32 weights, cached in ``--workdir``)
is ``cachemgr add``ed to a site store, served by a site daemon on 127.0.0.1 (one process).
Nodes are ``cachemgr daemon`` children on fresh stores, started before the clock, whose
upstream is the site (``CACHEMGR_UPSTREAMS``) and which have no origin at all; a node's figure
is the time of its ``POST /v1/resolve`` (refs, manifest, every blob fetched, hashed, written,
published). Phases:

1. ``direct``: a node's fill from the site against ``curl`` fetching the same blobs from the same
   site (``--parallel --parallel-max 4``, as the node fetches 4 at a time, into a fresh
   directory), ``--rounds`` times, the order alternating; ratio = node throughput / curl's
   (goal >= 0.9);
2. ``squid cold``: a fresh Squid (Debian ``squid``, config derived from docs/squid.conf by
   tests/support/squid.py) and ``--nodes`` nodes that fill at once through it
   (``CACHEMGR_PROXY``); reported: the last node's time and the site's egress, the bytes of the
   bodies it logged as sent (``sent /v1/blobs/<d>: N of SIZE``), as a multiple of the model
   (goal 1x);
3. ``squid hit``: a node's fill through the now warm Squid against curl through it, ``--rounds``
   times; then ``--nodes`` nodes at once on the hit, with the site's egress (goal 0).

Each timed run waits for an idle machine first (harness.QuietGate, ``--quiet-wait``) and
records the other load meanwhile. Exit status 1 when a fill failed or a copy is wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.bench_fill
    from benchmarks import harness
else:  # run as a script: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]

# The tests' runners (harness puts the checkout on sys.path): a daemon with a TCP listener, Squid.
from tests.support.daemons import Daemon, free_port  # noqa: E402
from tests.support.squid import Squid  # noqa: E402

HANDLE = "https://tfhub.dev/bench/big/1"
RATIO_TARGET = 0.9
_SENT = re.compile(r"sent /v1/(?:blobs|manifests)/[0-9a-f]{64}: (\d+) of")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir, env = harness.bench_env(args.workdir)
        self.root = self.workdir / "fill"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        # No origin: tfhub.dev goes to a port nobody listens on, so a node can only use its upstream.
        self.env = {**env, "CACHEMGR_MIRRORS": f"https://tfhub.dev/=http://127.0.0.1:{free_port()}/",
                    "CACHEMGR_RETRIES": "0", "CACHEMGR_WORKERS": "1"}
        self.gate = harness.QuietGate(args.quiet_wait)
        self.count = 0
        self.daemons: list[Daemon] = []

    def site(self, archive: Path) -> Daemon:
        home = self.root / "site"
        harness.cachemgr_add(home, HANDLE, archive, self.env)
        self.blobs = {p.name: p.stat().st_size for p in (home / "blobs").rglob("*") if p.is_file()}
        self.model_bytes = sum(self.blobs.values())
        self.site_daemon = self._daemon(home, {}, f"127.0.0.1:{free_port()}")
        return self.site_daemon

    def _daemon(self, home: Path, extra: dict[str, str], listen: str | None = None,
                env: dict[str, str] | None = None) -> Daemon:
        home.mkdir(parents=True, exist_ok=True)
        d = Daemon(home, {**(self.env if env is None else env), **extra}, sock=home / "d.sock", listen=listen)
        d.wait_ready(60)
        self.daemons.append(d)
        return d

    def node(self, proxy: str | None) -> Daemon:
        self.count += 1
        extra = {"CACHEMGR_UPSTREAMS": self.site_daemon.base}
        env = dict(self.env)
        if proxy:
            extra["CACHEMGR_PROXY"] = proxy
            # bench_env's NO_PROXY names 127.0.0.1, where the site listens: a node would bypass
            # Squid (the default proxy honours NO_PROXY) and every node hit the site itself.
            for var in ("NO_PROXY", "no_proxy"):
                env.pop(var, None)
        return self._daemon(self.root / f"node{self.count}", extra, env=env)

    def retire(self, d: Daemon) -> None:
        d.stop(signal.SIGTERM)
        self.daemons.remove(d)
        shutil.rmtree(d.home, ignore_errors=True)

    def egress(self) -> int:
        return sum(int(m.group(1)) for m in _SENT.finditer(self.site_daemon.output()))

    def check(self, d: Daemon) -> None:
        got = {p.name: p.stat().st_size for p in (d.home / "blobs").rglob("*") if p.is_file()}
        if got != self.blobs:
            raise harness.ChildError(f"node {d.home} holds {len(got)} blobs, the site {len(self.blobs)}")

    def fill(self, nodes: list[Daemon]) -> list[float]:
        """Every node resolves HANDLE at once; each one's seconds."""
        times = [0.0] * len(nodes)
        errors: list[str] = []
        go = threading.Barrier(len(nodes) + 1)

        def one(i: int) -> None:
            go.wait()
            start = time.perf_counter()
            code, doc = nodes[i].call("POST", "/v1/resolve", {"handle": HANDLE})
            times[i] = time.perf_counter() - start
            if code != 200 or not doc.get("fetched"):
                errors.append(f"{nodes[i].home}: {code} {doc}")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(nodes))]
        for t in threads:
            t.start()
        self.gate.wait()
        go.wait()
        for t in threads:
            t.join()
        if errors:
            raise harness.ChildError("; ".join(errors))
        for d in nodes:
            self.check(d)
        return times

    def curl(self, proxy: str | None) -> float:
        out = self.root / f"curl{self.count}"
        self.count += 1
        out.mkdir()
        cmd = ["curl", "--silent", "--show-error", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", "4"]
        cmd += ["--proxy", proxy, "--noproxy", ""] if proxy else ["--noproxy", "*"]
        for digest in self.blobs:
            cmd += ["-o", str(out / digest), f"{self.site_daemon.base}/v1/blobs/{digest}"]
        self.gate.wait()
        start = time.perf_counter()
        subprocess.run(cmd, check=True, timeout=600)
        took = time.perf_counter() - start
        got = {p.name: p.stat().st_size for p in out.iterdir()}
        if got != self.blobs:
            raise harness.ChildError(f"curl fetched {got}, the site has {self.blobs}")
        big = max(self.blobs, key=lambda d: self.blobs[d])
        if hashlib.sha256((out / big).read_bytes()).hexdigest() != big:
            raise harness.ChildError(f"curl's copy of {big} is corrupt")
        shutil.rmtree(out)
        return took

    def node_vs_curl(self, proxy: str | None) -> dict[str, Any]:
        node_t, curl_t = [], []
        for r in range(self.args.rounds):
            for kind in (("node", "curl") if r % 2 == 0 else ("curl", "node")):
                if kind == "curl":
                    curl_t.append(self.curl(proxy))
                else:
                    d = self.node(proxy)
                    node_t.append(self.fill([d])[0])
                    self.retire(d)
        node, curl = statistics.median(node_t), statistics.median(curl_t)
        return {"node_s": node_t, "curl_s": curl_t, "node_median_s": node, "curl_median_s": curl,
                "node_mib_s": self.model_bytes / node / 2**20, "curl_mib_s": self.model_bytes / curl / 2**20,
                "ratio": curl / node}

    def herd(self, squid: Squid) -> dict[str, Any]:
        nodes = [self.node(squid.url) for _ in range(self.args.nodes)]
        before, logged = self.egress(), len(squid.access_lines())
        times = self.fill(nodes)
        sent = self.egress() - before
        # Every node's every blob through Squid, or the egress says nothing about Squid.
        through = sum("/v1/blobs/" in line for line in squid.access_lines()[logged:])
        if through < len(nodes) * len(self.blobs):
            raise harness.ChildError(f"Squid logged {through} blob requests, {len(nodes)} nodes should have made "
                                     f"{len(nodes) * len(self.blobs)}: the nodes went around it")
        for d in nodes:
            self.retire(d)
        return {"last_s": max(times), "first_s": min(times), "egress_bytes": sent,
                "egress_models": sent / self.model_bytes}

    def close(self) -> None:
        for d in list(self.daemons):
            d.stop(signal.SIGKILL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    _, archive = harness.ensure_archive(bench.workdir, args.size_mb, False, bench.env)
    try:
        bench.site(archive)
        out: dict[str, Any] = {"model_bytes": bench.model_bytes, "blobs": len(bench.blobs), "nodes": args.nodes}
        out["direct"] = bench.node_vs_curl(None)
        if args.no_squid:
            return out
        with Squid() as squid:
            out["squid_cold"] = bench.herd(squid)
            out["squid_hit"] = bench.node_vs_curl(squid.url)
            out["squid_hit_herd"] = bench.herd(squid)
        out["waited_for_idle_s"] = round(bench.gate.waited, 1)
        return out
    finally:
        bench.close()


def table(doc: dict[str, Any]) -> str:
    mib = doc["model_bytes"] / 2**20
    d, h, c, hh = doc["direct"], doc["squid_hit"], doc["squid_cold"], doc["squid_hit_herd"]
    lines = [
        f"model: {mib:.0f} MiB in {doc['blobs']} blobs; {doc['nodes']} nodes",
        f"direct     node {d['node_median_s']:.2f} s ({d['node_mib_s']:.0f} MiB/s)   curl {d['curl_median_s']:.2f} s "
        f"({d['curl_mib_s']:.0f} MiB/s)   ratio {d['ratio']:.2f} (goal >= {RATIO_TARGET})",
        f"squid hit  node {h['node_median_s']:.2f} s ({h['node_mib_s']:.0f} MiB/s)   curl {h['curl_median_s']:.2f} s "
        f"({h['curl_mib_s']:.0f} MiB/s)   ratio {h['ratio']:.2f}",
        f"squid cold {doc['nodes']} nodes at once: last {c['last_s']:.2f} s; site egress "
        f"{c['egress_bytes'] / 2**20:.1f} MiB = {c['egress_models']:.2f}x the model (goal 1x)",
        f"squid hit  {doc['nodes']} nodes at once: last {hh['last_s']:.2f} s; site egress "
        f"{hh['egress_bytes'] / 2**20:.1f} MiB = {hh['egress_models']:.2f}x",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--no-squid", action="store_true", help="only the direct phase")
    harness.add_common_args(p, quiet_wait=45.0)
    args = p.parse_args()
    try:
        doc = run(args)
    except (harness.ChildError, subprocess.CalledProcessError) as exc:
        print(f"bench_fill: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json or args.no_squid else table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
