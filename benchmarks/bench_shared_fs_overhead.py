"""What a shared filesystem costs a pull: ``cachemgr pull`` of one ~200 MB model into a store on the
GlusterFS volume against the same pull into a store on local disk.

    python benchmarks/bench_shared_fs_overhead.py [--size-mb 200] [--runs 3] [--json]

Needs root, glusterd and the GlusterFS client (the tests' bed, ``tests/support/gluster.py``: a
2-brick distributed volume, mounted in its own mount namespace). Both pulls run on that node
(``nsenter``), from the same archive server on 127.0.0.1 (bench_pull.py's, serving from the page
cache), each into a fresh empty store, alternating, with ``sync`` first. Reported: median wall
time of the whole ``cachemgr pull`` command per store, the ratio volume/local, and the GlusterFS
file operations one pull makes (``gluster volume profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from typing import Any

if __package__:
    from benchmarks import harness
    from benchmarks.bench_cluster_cold_start import fops_since
else:
    import harness  # type: ignore[no-redef]
    from bench_cluster_cold_start import fops_since  # type: ignore[no-redef]

from tests.support.gluster import GlusterBed, gluster  # noqa: E402


def bench(args: argparse.Namespace) -> int:
    workdir, env = harness.bench_env(args.workdir)
    root, archive = harness.ensure_archive(workdir, args.size_mb, args.rebuild, env)
    bedroot = workdir / "fs-overhead-bed"
    shutil.rmtree(bedroot, ignore_errors=True)
    bed = GlusterBed(bedroot, nodes=1)
    node = bed.nodes[0]
    server = harness.Server(root, env)
    url = f"http://127.0.0.1:{server.port}/{harness.URL_PATH}"
    gate = harness.QuietGate(args.quiet_wait)
    times: dict[str, list[float]] = {"gluster": [], "local": []}
    fops: dict[str, int] = {}
    try:
        gluster("volume", "profile", bed.volume.name, "start")
        for n in range(args.runs):
            for where in ("gluster", "local") if n % 2 == 0 else ("local", "gluster"):
                home = (bed.mount if where == "gluster" else node.local) / f"store-{where}-{n}"
                gate.wait()
                fops_since(bed.volume.name)
                r = harness.run_child(node.argv(*harness.cachemgr_cmd(), "--home", str(home), "pull", url), env,
                                      server=server)
                if where == "gluster":
                    fops = fops_since(bed.volume.name)
                times[where].append(r.wall_s)
                harness.log(f"run {n} {where:8} {r.wall_s:6.2f}s (other load {r.other_load:.1f} cores)")
                node.run("rm", "-rf", str(home), timeout=300)
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    finally:
        server.stop()
        bed.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    s: dict[str, Any] = {"median_s": med, "runs_s": times, "ratio": med["gluster"] / med["local"],
                         "fops_per_pull": dict(sorted(fops.items())), "archive_bytes": archive.stat().st_size}
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        mib = s["archive_bytes"] / harness.MIB
        print(f"cachemgr pull of a {mib:.0f} MiB model (whole command, median of {args.runs}):")
        print(f"  store on the GlusterFS volume  {med['gluster']:6.2f}s")
        print(f"  store on local disk            {med['local']:6.2f}s")
        print(f"  ratio volume/local             {s['ratio']:6.2f}")
        print("  GlusterFS FOPs of one pull: " + ", ".join(f"{k} {v}" for k, v in s["fops_per_pull"].items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mb", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rebuild", action="store_true")
    harness.add_common_args(p, quiet_wait=20.0)
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 10:
        p.error("--runs must be 1..10")
    return bench(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
