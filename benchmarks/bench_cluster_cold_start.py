"""Cold start on many nodes: N simulated nodes (GlusterFS bed) ``hub.resolve`` one uncached ~200 MB model at once.

    python benchmarks/bench_cluster_cold_start.py [--nodes 16] [--size-mb 200] [--rounds 1] [--json]

Needs root, glusterd and the GlusterFS client (tests/README.md, "Many nodes"). The bed is the
tests' (``tests/support/gluster.py``): a 2-brick distributed volume, one mount namespace and
FUSE mount per node at one path. The archive (``build_big_model`` + ``make_archive``, cached in
``--workdir``) is served by bench_herd.py's counting server on 127.0.0.1. Scenarios, each from a
fresh cache, each child on its own node:

- ``alone``: one node, its daemon, one shim child (the 1.5x goal's reference);
- ``cachemgr``: N nodes, a daemon per node over ONE store on the volume (``CACHEMGR_NODE_ID``
  per node), one shim child per node;
- ``hub_per_node``: N plain tensorflow_hub children, each with its own ``TFHUB_CACHE_DIR`` on
  its node's local disk (N downloads);
- ``hub_shared``: N plain tensorflow_hub children sharing one ``TFHUB_CACHE_DIR`` on the volume
  (hub's lock file: one downloads, the others poll every 5 s).

Each child imports first and waits (bench_herd.py's ready/go protocol); its figure is
``time.time()`` after ``hub.resolve`` minus go. Reported per scenario: last node ready (the time
until every node is ready), first node, the archive downloads and bytes the server sent, and
the GlusterFS file operations during the scenario (``gluster volume profile``), per node.
Exit status: 0 if cachemgr caused one download, 1 otherwise, 2 if a child failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

if __package__:  # imported as benchmarks.bench_cluster_cold_start
    from benchmarks import bench_herd, harness
else:  # run as a script: benchmarks/ itself is first on sys.path
    import bench_herd  # type: ignore[no-redef]
    import harness  # type: ignore[no-redef]

from tests.support.daemons import Daemon  # noqa: E402  (harness puts the checkout on sys.path)
from tests.support.gluster import GlusterBed, Node, gluster  # noqa: E402

SCENARIOS = ("alone", "cachemgr", "hub_per_node", "hub_shared")
READY_GOAL = 1.5
TIMEOUT = 600.0


@dataclass
class Scenario:
    name: str
    round: int
    nodes: int
    first_s: float
    last_s: float
    times_s: list[float]
    downloads: int
    completed: int
    origin_bytes: int
    fops: dict[str, int] = field(default_factory=dict)
    other_load: float = 0.0


def fops_since(volume: str) -> dict[str, int]:
    """Calls per file operation over every brick since the last ``info incremental``."""
    text = gluster("volume", "profile", volume, "info", "incremental", timeout=120)
    out: dict[str, int] = {}
    for line in text.splitlines():
        cols = line.split()
        # "%-latency Avg-latency Min-Latency Max-Latency No. of calls Fop"
        if len(cols) >= 6 and cols[-1].isupper() and cols[-2].isdigit():
            out[cols[-1]] = out.get(cols[-1], 0) + int(cols[-2])
    return out


def run(name: str, n: int, bed: GlusterBed, nodes: list[Node], url: str, env: dict[str, str],
        server: bench_herd.CountingServer, gate: harness.QuietGate, archive_bytes: int) -> Scenario:
    work = bed.mount / f"{name}-{n}"
    daemons: list[Daemon] = []
    children: list[harness.ChildPipe] = []
    nodes[0].sh(f"rm -rf {work} && mkdir -p {work}")
    try:
        kind = "cachemgr" if name in ("alone", "cachemgr") else "hub"
        for node in nodes:
            node_env = {**env, "CACHEMGR_HOME": str(work / "store"), "CACHEMGR_NODE_ID": node.name,
                        "CACHEMGR_WORKERS": "1"}
            if kind == "cachemgr":
                sock = node.local / f"{name}-{n}.sock"
                daemons.append(Daemon(work / "store", node_env, sock=sock, wrap=node.argv(), rundir=node.local))
                child_env = {**node_env, "TFHUB_CACHE_DIR": str(work / "store" / "view"), "CACHEMGR_SOCKET": str(sock)}
            elif name == "hub_per_node":
                cache = node.local / f"tfhub-{n}"
                shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir()
                child_env = {**env, "TFHUB_CACHE_DIR": str(cache)}
            else:
                child_env = {**env, "TFHUB_CACHE_DIR": str(work / "tfhub")}
            cmd = node.argv(*harness.child_cmd(bench_herd.__file__, "worker", kind, url))
            children.append(harness.ChildPipe(cmd, child_env, node.local / f"{name}-{n}.err", stdin=True))
        for d in daemons:
            d.wait_ready(120)
        harness.wait_ready(children, name, TIMEOUT)
        os.sync()
        gate.wait()
        fops_since(bed.volume.name)  # start a fresh interval
        before = server.stats()
        busy = harness.host_busy_seconds()
        go = time.time()
        for c in children:
            c.send("go\n")
        reports = harness.wait_results(children, name, TIMEOUT)
        wall = time.time() - go
        after = server.stats()
        fops = fops_since(bed.volume.name)
        busy = harness.host_busy_seconds() - busy
        times = sorted(r["end_wall"] - go for r in reports)
        completed = after["completed"] - before["completed"]
        return Scenario(name, n, len(nodes), times[0], times[-1], times, after["downloads"] - before["downloads"],
                        completed, completed * archive_bytes, fops, busy / wall if wall > 0 else 0.0)
    finally:
        for c in children:
            c.close()
        for d in daemons:
            d.stop()
        nodes[0].run("rm", "-rf", str(work), timeout=300)


def summarize(runs: list[Scenario], archive_bytes: int) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for name in SCENARIOS:
        mine = [r for r in runs if r.name == name]
        s[name] = {"last_s": statistics.median(r.last_s for r in mine),
                   "first_s": statistics.median(r.first_s for r in mine),
                   "downloads": [r.downloads for r in mine], "origin_bytes": [r.origin_bytes for r in mine],
                   "origin_archives": statistics.median(r.origin_bytes / archive_bytes for r in mine),
                   "fops_per_node": {k: v / mine[-1].nodes for k, v in sorted(mine[-1].fops.items())}}
    s["ready_ratio"] = s["cachemgr"]["last_s"] / s["alone"]["last_s"]
    s["ready_goal"] = READY_GOAL
    s["one_download"] = all(r.downloads == 1 for r in runs if r.name in ("alone", "cachemgr"))
    s["other_load_cores_max"] = max(r.other_load for r in runs)
    return s


def print_table(s: dict[str, Any], nodes: int, archive_mib: float) -> None:
    print(f"{nodes} nodes cold-start one {archive_mib:.0f} MiB model (GlusterFS bed; seconds from go, medians)")
    print(f"{'scenario':<14} {'first':>7} {'last':>7} {'downloads':>10} {'origin MiB':>11} {'FOPs/node':>10}")
    for name in SCENARIOS:
        x = s[name]
        fops = sum(x["fops_per_node"].values())
        mib = statistics.median(x["origin_bytes"]) / harness.MIB
        print(f"{name:<14} {x['first_s']:7.2f} {x['last_s']:7.2f} {','.join(map(str, x['downloads'])):>10} "
              f"{mib:11.0f} {fops:10.0f}")
    ok = "OK" if s["ready_ratio"] <= READY_GOAL else "MISSED"
    print(f"all {nodes} nodes ready / one node alone: {s['ready_ratio']:.2f} (goal <= {READY_GOAL}: {ok}); "
          f"cachemgr downloads once: {'yes' if s['one_download'] else 'NO'}")
    print("cachemgr FOPs per node: " + ", ".join(f"{k} {v:.0f}" for k, v in s["cachemgr"]["fops_per_node"].items()))
    if s["other_load_cores_max"] > 1.9:
        print("note: the host's 2 cores were saturated during the runs (16 TF processes): times are CPU-bound")


def bench(args: argparse.Namespace) -> int:
    workdir, env = harness.bench_env(args.workdir)
    root, archive = harness.ensure_archive(workdir, args.size_mb, args.rebuild, env)
    archive_bytes = archive.stat().st_size
    bedroot = workdir / "cluster-bed"
    shutil.rmtree(bedroot, ignore_errors=True)
    bed = GlusterBed(bedroot, nodes=args.nodes)
    gluster("volume", "profile", bed.volume.name, "start")
    server = bench_herd.CountingServer(root, env)
    url = f"http://127.0.0.1:{server.port}/{harness.URL_PATH}"
    gate = harness.QuietGate(args.quiet_wait)
    runs: list[Scenario] = []
    try:
        for n in range(args.rounds):
            for name in SCENARIOS:
                nodes = bed.nodes[:1] if name == "alone" else bed.nodes
                r = run(name, n, bed, nodes, url, env, server, gate, archive_bytes)
                runs.append(r)
                harness.log(f"round {n} {name:12} first {r.first_s:6.2f}s last {r.last_s:6.2f}s "
                            f"downloads {r.downloads} load {r.other_load:.1f} cores")
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    finally:
        server.stop()
        bed.close()
    s = summarize(runs, archive_bytes)
    if args.json:
        print(json.dumps({"config": {"nodes": args.nodes, "size_mb": args.size_mb, "archive_bytes": archive_bytes,
                                     "rounds": args.rounds, "cpus": os.cpu_count()},
                          "summary": s, "runs": [asdict(r) for r in runs]}, indent=2))
    else:
        print_table(s, args.nodes, archive_bytes / harness.MIB)
    return 0 if s["one_download"] else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--size-mb", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--rebuild", action="store_true")
    harness.add_common_args(p, quiet_wait=20.0)
    args = p.parse_args(argv)
    if not 2 <= args.nodes <= 64 or not 1 <= args.rounds <= 5:
        p.error("--nodes must be 2..64, --rounds 1..5")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
