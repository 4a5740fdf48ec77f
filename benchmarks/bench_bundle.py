"""Benchmark ``cachemgr export`` / ``import`` against ``tar`` + ``zstd`` + ``sha256sum``.

    python benchmarks/bench_bundle.py [--size-mb 1024] [--models 6] [--runs 2] [--json] [--workdir DIR]

Builds (once, cached under ``--workdir``) ``--models`` SavedModel-like trees of about
``--size-mb`` MiB in all (float32 N(0, 0.05) weights, like trained weights: zstd shrinks them
by ~10%). They share blobs the way fine-tuned variants do: every model has the same two
backbone shards, ``assets/vocab.txt`` and ``variables.index``, plus two shards of its own.
They are ingested into a store with cachemgr's library. Then, ``--runs`` rounds of:

- **export**: ``cachemgr export --all -o B.tar.zst`` vs ``tar -I 'zstd -T0' -cf`` of the model
  trees (the same files an operator would otherwise carry); target ratio <= 1.2;
- **import**: ``cachemgr import B.tar.zst`` into a fresh home (streams, verifies every blob's
  sha256, publishes snapshots, refs, view) vs ``tar -I zstd -xf`` + ``sha256sum`` of every
  extracted file; target ratio <= 1.0;
- **size**: the deduplicated bundle vs that tar.

Every command is a child process timed by wall clock, with its peak RSS from ``os.wait4``;
``sync`` runs before each. The best round counts. Because the bundle stores shared blobs once,
the same comparisons are also made against a tar of only the unique files ("same bytes"),
which isolates per-byte speed from deduplication.
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

if __package__:  # imported as benchmarks.bench_bundle
    from benchmarks import harness
    from benchmarks.harness import MIB, REPO_ROOT
else:  # run as a script: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]
    from harness import MIB, REPO_ROOT  # type: ignore[no-redef]

EXPORT_TARGET = 1.2
IMPORT_TARGET = 1.0


def build_trees(root: Path, total_mb: int, models: int, seed: int = 0) -> list[Path]:
    """Model trees: 2 shared backbone shards + 2 own shards each, shared vocab and index."""
    import numpy as np

    shard = max(1, total_mb * MIB // (models * 4)) // 4 * 4
    rng = np.random.default_rng(seed)

    def weights() -> bytes:
        out: bytes = (rng.standard_normal(shard // 4, dtype=np.float32) * np.float32(0.05)).tobytes()
        return out

    backbone = [weights(), weights()]
    vocab = "".join(f"token{i}\n" for i in range(200_000)).encode()
    index = rng.bytes(64 * 1024)
    trees = []
    for m in range(models):
        tree = root / f"model{m}"
        (tree / "variables").mkdir(parents=True)
        (tree / "assets").mkdir()
        (tree / "saved_model.pb").write_bytes(rng.bytes(256 * 1024))
        (tree / "fingerprint.pb").write_bytes(rng.bytes(64))
        (tree / "variables" / "variables.index").write_bytes(index)
        (tree / "assets" / "vocab.txt").write_bytes(vocab)
        for i, data in enumerate([*backbone, weights(), weights()]):
            (tree / "variables" / f"variables.data-{i:05d}-of-00004").write_bytes(data)
        trees.append(tree)
    return trees


def build_store(home: Path, trees: list[Path]) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from cachemgr.handles import parse_handle
    from cachemgr.ingest.publish import record_model
    from cachemgr.ingest.unpack import ingest_directory
    from cachemgr.store.manifest import Limits
    from cachemgr.store.objects import Store

    store = Store(home)
    store.create()
    for tree in trees:
        handle = parse_handle(f"https://tfhub.dev/bench/{tree.name}/1")
        result = ingest_directory(store, tree, handle.canonical, Limits(1 << 40, 1_000_000))
        record_model(store, handle, result, source="add")


def prepare(workdir: Path, size_mb: int, models: int, rebuild: bool) -> None:
    stamp = workdir / "built.json"
    want = {"size_mb": size_mb, "models": models}
    if rebuild or not stamp.exists() or json.loads(stamp.read_text()) != want:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        trees = build_trees(workdir / "models", size_mb, models)
        build_store(workdir / "store", trees)
        unique = workdir / "unique"  # one copy of each distinct file: the "same bytes" baseline
        unique.mkdir()
        for blob in (workdir / "store" / "blobs").rglob("*"):
            if blob.is_file():
                os.link(blob, unique / blob.name)
        stamp.write_text(json.dumps(want))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall time and peak RSS (MiB, the command and its waited-for children) of ``cmd``, after ``sync``."""
    try:
        res = harness.run_child(cmd, dict(os.environ) if env is None else env)
    except harness.ChildError as exc:
        raise SystemExit(f"benchmark command failed: {exc}") from None
    return {"seconds": res.wall_s, "rss_mib": res.peak_rss_mib}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def one_round(work: Path, models: Path, store: Path, env: dict[str, str]) -> dict[str, Any]:
    cm = [sys.executable, "-m", "cachemgr"]
    out: dict[str, Any] = {}
    bundle, tarball, unique_tar = work / "b.tar.zst", work / "trees.tar.zst", work / "unique.tar.zst"
    for p in (bundle, tarball, unique_tar):
        p.unlink(missing_ok=True)
    out["export"] = timed([*cm, "--home", str(store), "export", "--all", "-o", str(bundle)], env)
    out["tar_c"] = timed(["tar", "-I", "zstd -T0", "-cf", str(tarball), "-C", str(models), "."])
    out["tar_c_unique"] = timed(["tar", "-I", "zstd -T0", "-cf", str(unique_tar), "-C", str(work / "unique"), "."])
    sizes = {"bundle": bundle.stat().st_size, "tar": tarball.stat().st_size, "tar_unique": unique_tar.stat().st_size}

    fresh = work / "fresh"
    for key, cmd in (
        ("import", [*cm, "--home", str(fresh), "--offline", "import", str(bundle)]),
        ("tar_x_sha", ["sh", "-c", f"tar -I zstd -xf {tarball} -C {fresh} && "
                       f"find {fresh} -type f -print0 | xargs -0 sha256sum > /dev/null"]),
        ("tar_x_sha_unique", ["sh", "-c", f"tar -I zstd -xf {unique_tar} -C {fresh} && "
                              f"find {fresh} -type f -print0 | xargs -0 sha256sum > /dev/null"]),
    ):
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        out[key] = timed(cmd, env)
        if key == "import":
            refs = list((fresh / "refs").glob("*.json"))
            assert len(refs) == len(list(models.iterdir())), "import did not publish every model"
    shutil.rmtree(fresh, ignore_errors=True)
    out["sizes"] = sizes
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    for tool in ("tar", "zstd", "sha256sum"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is required (apt-get install -y {'zstd' if tool == 'zstd' else 'coreutils'})")
    t0 = time.perf_counter()
    # Built in a child: a fork inherits the parent's peak RSS, which would pollute the figures.
    subprocess.run([sys.executable, __file__, "--prepare-only", "--workdir", str(args.workdir),
                    "--size-mb", str(args.size_mb), "--models", str(args.models)]
                   + (["--rebuild"] if args.rebuild else []), check=True)
    models, store = args.workdir / "models", args.workdir / "store"
    build_s = time.perf_counter() - t0
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env = {k: v for k, v in env.items() if not k.startswith("CACHEMGR_")}
    rounds = [one_round(args.workdir, models, store, env) for _ in range(args.runs)]

    def best(key: str) -> dict[str, float]:
        return min((r[key] for r in rounds), key=lambda x: x["seconds"])

    b = {k: best(k) for k in ("export", "tar_c", "tar_c_unique", "import", "tar_x_sha", "tar_x_sha_unique")}
    sizes = rounds[0]["sizes"]
    logical = du(models)
    unique = du(args.workdir / "unique")
    return {
        "logical_bytes": logical, "unique_bytes": unique, "models": args.models, "runs": args.runs,
        "build_seconds": round(build_s, 1),
        "seconds": {k: round(v["seconds"], 3) for k, v in b.items()},
        "peak_rss_mib": {k: round(v["rss_mib"], 1) for k, v in b.items()},
        "sizes": sizes,
        "ratios": {
            "export_vs_tar": round(b["export"]["seconds"] / b["tar_c"]["seconds"], 3),
            "import_vs_untar_sha256sum": round(b["import"]["seconds"] / b["tar_x_sha"]["seconds"], 3),
            "bundle_size_vs_tar": round(sizes["bundle"] / sizes["tar"], 3),
            "export_vs_tar_same_bytes": round(b["export"]["seconds"] / b["tar_c_unique"]["seconds"], 3),
            "import_vs_untar_sha256sum_same_bytes": round(
                b["import"]["seconds"] / b["tar_x_sha_unique"]["seconds"], 3),
            "bundle_size_vs_tar_same_bytes": round(sizes["bundle"] / sizes["tar_unique"], 3),
        },
        "targets": {"export_vs_tar": EXPORT_TARGET, "import_vs_untar_sha256sum": IMPORT_TARGET},
    }


def print_table(doc: dict[str, Any]) -> None:
    print(f"data: {doc['models']} models, {doc['logical_bytes'] / MIB:.0f} MiB in files, "
          f"{doc['unique_bytes'] / MIB:.0f} MiB distinct (best of {doc['runs']} rounds)")
    s, rss = doc["seconds"], doc["peak_rss_mib"]
    rows = [
        ("cachemgr export --all", "export"), ("tar -I 'zstd -T0' -cf (model trees)", "tar_c"),
        ("tar -I 'zstd -T0' -cf (distinct files)", "tar_c_unique"), ("cachemgr import (verified)", "import"),
        ("tar -I zstd -xf + sha256sum (trees)", "tar_x_sha"),
        ("tar -I zstd -xf + sha256sum (distinct)", "tar_x_sha_unique"),
    ]
    for label, key in rows:
        print(f"  {label:42} {s[key]:7.2f} s   peak RSS {rss[key]:7.1f} MiB")
    z = doc["sizes"]
    print(f"  sizes: bundle {z['bundle'] / MIB:.1f} MiB, tar of trees {z['tar'] / MIB:.1f} MiB, "
          f"tar of distinct files {z['tar_unique'] / MIB:.1f} MiB")
    r = doc["ratios"]
    print(f"ratios: export/tar {r['export_vs_tar']:.2f} (target <= {EXPORT_TARGET}), "
          f"import/(untar+sha256sum) {r['import_vs_untar_sha256sum']:.2f} (target <= {IMPORT_TARGET}), "
          f"bundle/tar size {r['bundle_size_vs_tar']:.2f}")
    print(f"same bytes: export {r['export_vs_tar_same_bytes']:.2f}, import "
          f"{r['import_vs_untar_sha256sum_same_bytes']:.2f}, size {r['bundle_size_vs_tar_same_bytes']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mb", type=int, default=1024, help="total size of the model files in MiB")
    p.add_argument("--models", type=int, default=6, help="number of models (they share blobs)")
    p.add_argument("--runs", type=int, default=2, help="rounds; the best counts")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cachemgr-bench-bundle"))
    p.add_argument("--rebuild", action="store_true", help="build the models and store again")
    p.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()  # the timed commands run from the checkout's root
    if args.prepare_only:
        prepare(args.workdir, args.size_mb, args.models, args.rebuild)
        return 0
    doc = bench(args)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
