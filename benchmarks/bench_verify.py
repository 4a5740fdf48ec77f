"""Verify throughput against ``sha256sum`` over the same blobs (warm page cache).

Builds a store of real blobs (random bytes, named by their sha256): a mix of big variable
shards and small files. Times, best of 3 each:

- ``sha256sum`` on one core (``xargs -0 sha256sum``);
- ``sha256sum`` on both cores (``xargs -0 -P2``), the fair baseline for a 2-thread verify;
- ``cachemgr verify`` (library ``run_verify``: blob phase with two hashing threads).

Target: cachemgr >= 0.9x the throughput of ``xargs -P2 sha256sum``. Run::

    PYTHONPATH=. python benchmarks/bench_verify.py [--gib 1.5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cachemgr.lifecycle.scrub import run_verify
from cachemgr.lifecycle.verify import VerifyOptions
from cachemgr.settings import Settings
from cachemgr.store.objects import Store


def build(store: Store, total: int) -> list[Path]:
    rng = random.Random(42)
    paths: list[Path] = []
    big, small = 16 << 20, 256 << 10
    budget = total
    while budget > 0:
        size = big if len(paths) % 8 == 0 else small
        data = rng.randbytes(min(size, budget))
        digest = hashlib.sha256(data).hexdigest()
        path = store.blob_path(digest)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o444)
        paths.append(path)
        budget -= len(data)
    return paths


def best_of(n: int, fn: object) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.5)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.dir))
    try:
        store = Store(root / "home")
        store.create()
        paths = build(store, int(args.gib * (1 << 30)))
        total = sum(p.stat().st_size for p in paths)
        listing = b"\0".join(str(p).encode() for p in paths) + b"\0"
        for p in paths:  # warm the page cache
            p.read_bytes()

        def sha256sum(parallel: int) -> None:
            per = -(-len(paths) // parallel)
            subprocess.run(["xargs", "-0", f"-P{parallel}", f"-n{per}", "sha256sum"], input=listing, check=True,
                           stdout=subprocess.DEVNULL)

        settings = Settings(home=store.home)

        def verify() -> None:
            report = run_verify(settings, store, VerifyOptions())
            assert report.blobs == len(paths) and not report.problems, report.problems

        t1 = best_of(3, lambda: sha256sum(1))
        t2 = best_of(3, lambda: sha256sum(2))
        tv = best_of(3, verify)
        mb = total / 1e6
        print(f"{len(paths)} blobs, {total / (1 << 30):.2f} GiB, warm cache, {os.cpu_count()} cores")
        print(f"{'sha256sum (1 core)':28} {t1:6.2f}s {mb / t1:8.0f} MB/s")
        print(f"{'xargs -P2 sha256sum':28} {t2:6.2f}s {mb / t2:8.0f} MB/s")
        print(f"{'cachemgr verify (2 threads)':28} {tv:6.2f}s {mb / tv:8.0f} MB/s")
        print(f"ratio vs xargs -P2 sha256sum: {t2 / tv:.2f}x (target >= 0.9); vs one sha256sum: {t1 / tv:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
