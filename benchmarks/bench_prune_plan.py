"""Prune planning on a synthetic store: 10k, 30k and 100k models (100k models ~ 1M blobs).

The store is built directly on disk with only what the scanner reads: ref files, manifests,
empty blob files (fake names: the scanner never hashes or stats referenced blobs), snapshot
directories, last-use records and a few pins. It is grown in steps, and at each step we time
``inventory.scan`` and ``prune.plan_prune`` (best of 3, warm cache) and report how the time
grows with the store (it should be about linear). Run::

    PYTHONPATH=. python benchmarks/bench_prune_plan.py [--dir DIR] [--steps 10000,30000,100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from cachemgr.lifecycle.prune_plan import PrunePolicy, plan_prune
from cachemgr.lifecycle.scan import scan
from cachemgr.store.objects import Store
from cachemgr.store.refs import key_of
from cachemgr.store.view import hub_key

BLOBS_PER_MODEL = 10  # plus one blob shared by each group of 10 models
BLOB_SIZE = 1 << 20  # claimed in manifests; the files themselves are empty


def fake_digest(kind: str, n: int) -> str:
    return hashlib.sha256(f"{kind}-{n}".encode()).hexdigest()


def build(store: Store, start: int, stop: int, now: float) -> None:
    for sub in ("pins", "uses"):
        (store.home / sub).mkdir(exist_ok=True)
    for sub in {f"{i:02x}" for i in range(256)}:
        (store.blobs / sub).mkdir(exist_ok=True)
    for m in range(start, stop):
        handle = f"https://tfhub.dev/bench/model-{m // 3}/{m % 3 + 1}"
        blobs = [fake_digest("blob", m * BLOB_SIZE + i) for i in range(BLOBS_PER_MODEL)]
        shared = fake_digest("shared", m // 10)
        files = [[f"variables/variables.data-{i:05d}-of-{BLOBS_PER_MODEL:05d}", 420, BLOB_SIZE, b]
                 for i, b in enumerate(blobs)] + [["assets/vocab.txt", 420, 4096, shared]]
        manifest = json.dumps({"format": 1, "dirs": ["assets", "variables"], "files": files}).encode()
        digest = fake_digest("manifest", m)
        (store.manifests / f"{digest}.json").write_bytes(manifest)
        for b in [*blobs, shared]:
            os.close(os.open(store.blobs / b[:2] / b, os.O_WRONLY | os.O_CREAT, 0o444))
        (store.snapshots / digest).mkdir(exist_ok=True)
        ref = {"handle": handle, "manifest": digest, "aliases": [handle, handle + "/"], "size": 10 * BLOB_SIZE,
               "files": 11, "fetched_at": now - 90 * 86400}
        (store.refs / f"{key_of(handle)}.json").write_text(json.dumps(ref))
        use = store.home / "uses" / f"{hub_key(handle)}.benchhost"
        use.touch()
        when = now - (m * 7919 % 60) * 86400  # spread over 60 days
        os.utime(use, (when, when))
        if m % 100 == 0:
            pin = {"handle": handle, "asked": handle, "digest": digest, "who": "bench@host", "when": now}
            (store.home / "pins" / f"{key_of(handle)}.json").write_text(json.dumps(pin))
    # Make every manifest/snapshot/ref "old" so that no grace period protects them.
    old = now - 30 * 86400
    for d in (store.manifests, store.snapshots, store.refs):
        for entry in os.scandir(d):
            os.utime(entry.path, (old, old))


def measure(store: Store, now: float) -> tuple[float, float, int, int, int]:
    best_scan = best_plan = float("inf")
    evicted = blobs = 0
    for _ in range(3):
        t0 = time.perf_counter()
        snap = scan(store, disk=False)
        t1 = time.perf_counter()
        plan = plan_prune(snap, PrunePolicy(max_size=BLOB_SIZE * len(snap.blobs) // 2, grace=3600), now)
        t2 = time.perf_counter()
        best_scan, best_plan = min(best_scan, t1 - t0), min(best_plan, t2 - t1)
        evicted, blobs = len(plan.evict), len(snap.blobs)
    return best_scan, best_plan, evicted, blobs, len(snap.models)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--steps", default="10000,30000,100000")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-prune-", dir=args.dir))
    store = Store(root / "home")
    store.create()
    now = time.time()
    rows = []
    try:
        built = 0
        for target in steps:
            t0 = time.perf_counter()
            build(store, built, target, now)
            built = target
            build_s = time.perf_counter() - t0
            scan_s, plan_s, evicted, blobs, models = measure(store, now)
            rows.append((models, blobs, scan_s, plan_s, evicted))
            print(f"built {models} models / {blobs} blobs (+{build_s:.0f}s): scan {scan_s:.2f}s, "
                  f"plan {plan_s:.2f}s, {evicted} evictions planned", flush=True)
        print()
        print(f"{'models':>8} {'blobs':>9} {'scan s':>8} {'plan s':>8} {'total s':>8} {'us/model':>9} {'vs first':>9}")
        base = (rows[0][2] + rows[0][3]) / rows[0][0]
        for models, blobs, scan_s, plan_s, _ in rows:
            total = scan_s + plan_s
            print(f"{models:>8} {blobs:>9} {scan_s:>8.2f} {plan_s:>8.2f} {total:>8.2f} "
                  f"{total / models * 1e6:>9.1f} {total / models / base:>8.2f}x")
        print("(last column: time per model relative to the smallest store; ~1.0x means linear growth)")
    finally:
        t0 = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        print(f"cleaned up {root} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
