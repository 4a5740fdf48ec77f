"""Benchmark ``cachemgr push`` to a local registry against ``skopeo copy`` of the same artifact.

    python benchmarks/bench_push.py [--size-mb 512] [--runs 3] [--json] [--workdir DIR]

Builds (once, cached under ``--workdir``) one SavedModel-like tree of about ``--size-mb`` MiB
(four weight shards, as bench_bundle.py makes them) in a store, and writes it once as an OCI
image layout (``cachemgr export --format oci-layout``): the very artifact push sends. Then,
``--runs`` rounds, each against fresh, empty registries (Debian ``docker-registry``,
distribution 2.8, on 127.0.0.1, storage on the same disk):

- **push**: ``cachemgr push HANDLE --to oci://127.0.0.1:PORT/bench``;
- **skopeo**: ``skopeo copy --dest-tls-verify=false oci:LAYOUT:NAME docker://127.0.0.1:PORT2/bench/...``;
- **again**: the same push once more, when the registry has every blob (HEADs only).

Each is a child process timed by wall clock with its peak RSS. The best round counts; the
ratio is push / skopeo (target <= 1.0: no slower than the standard tool).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__:
    from benchmarks import bench_bundle
    from benchmarks.harness import MIB, REPO_ROOT
else:
    import bench_bundle  # type: ignore[no-redef]
    from harness import MIB, REPO_ROOT  # type: ignore[no-redef]

TARGET = 1.0
HANDLE = "https://tfhub.dev/bench/model0/1"
NAME = "bench/model0:1"


def prepare(workdir: Path, size_mb: int, env: dict[str, str]) -> Path:
    # built in a child: a fork inherits the parent's peak RSS, which would pollute the figures
    subprocess.run([sys.executable, str(Path(bench_bundle.__file__)), "--prepare-only", "--workdir", str(workdir),
                    "--size-mb", str(size_mb), "--models", "1"], check=True)
    layout = workdir / "layout"
    if not layout.exists():
        bench_bundle.timed([sys.executable, "-m", "cachemgr", "--home", str(workdir / "store"), "export", HANDLE,
                            "--format", "oci-layout", "-o", str(layout)], env)
    return layout


def one_round(workdir: Path, layout: Path, env: dict[str, str]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.registry import LocalRegistry

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        with LocalRegistry(Path(tmp) / "a") as ours, LocalRegistry(Path(tmp) / "b") as theirs:
            push = [sys.executable, "-m", "cachemgr", "--home", str(workdir / "store"), "push", HANDLE,
                    "--to", ours.url("bench")]
            out["push"] = bench_bundle.timed(push, env)
            out["skopeo"] = bench_bundle.timed(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                                f"oci:{layout}:{NAME}",
                                                f"docker://{theirs.host}/bench/{NAME}"], env)
            out["again"] = bench_bundle.timed(push, env)
            out["uploads"] = {"push": sum(ours.uploads().values()), "skopeo": sum(theirs.uploads().values())}
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    for tool in ("skopeo", "docker-registry"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is required (apt-get install -y {tool})")
    env = {k: v for k, v in dict(os.environ, PYTHONPATH=str(REPO_ROOT)).items()
           if not k.startswith("CACHEMGR_") and not k.upper().endswith("_PROXY")}
    env["REGISTRY_AUTH_FILE"] = str(args.workdir / "no-auth.json")
    layout = prepare(args.workdir, args.size_mb, env)
    rounds = [one_round(args.workdir, layout, env) for _ in range(args.runs)]

    def best(key: str) -> dict[str, float]:
        return min((r[key] for r in rounds), key=lambda x: x["seconds"])

    b = {k: best(k) for k in ("push", "skopeo", "again")}
    size = bench_bundle.du(args.workdir / "unique")
    return {
        "bytes": size, "runs": args.runs, "uploads": rounds[0]["uploads"],
        "seconds": {k: round(v["seconds"], 3) for k, v in b.items()},
        "peak_rss_mib": {k: round(v["rss_mib"], 1) for k, v in b.items()},
        "mb_per_s": {k: round(size / MIB / b[k]["seconds"], 1) for k in ("push", "skopeo")},
        "ratios": {"push_vs_skopeo": round(b["push"]["seconds"] / b["skopeo"]["seconds"], 3)},
        "targets": {"push_vs_skopeo": TARGET},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cachemgr-bench-push")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    doc = bench(args)
    if args.json:
        print(json.dumps(doc, indent=1))
        return
    s, rss = doc["seconds"], doc["peak_rss_mib"]
    print(f"data: one model, {doc['bytes'] / MIB:.0f} MiB distinct, best of {doc['runs']} rounds; "
          f"blob uploads push/skopeo {doc['uploads']['push']}/{doc['uploads']['skopeo']}")
    print(f"cachemgr push (empty registry)     {s['push']:7.2f} s  {doc['mb_per_s']['push']:7.1f} MiB/s  "
          f"{rss['push']:6.1f} MiB RSS")
    print(f"skopeo copy oci: -> docker://      {s['skopeo']:7.2f} s  {doc['mb_per_s']['skopeo']:7.1f} MiB/s  "
          f"{rss['skopeo']:6.1f} MiB RSS")
    print(f"cachemgr push again (all present)  {s['again']:7.2f} s")
    print(f"ratio push / skopeo: {doc['ratios']['push_vs_skopeo']} (target <= {TARGET})")


if __name__ == "__main__":
    main()
