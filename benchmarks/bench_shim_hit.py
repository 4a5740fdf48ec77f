"""Cost of a cache hit through the cachemgr shim vs a plain tensorflow_hub cache hit.

    python benchmarks/bench_shim_hit.py [--iterations 2000] [--warmup 200] [--rounds 3] [--json]

Builds (once, cached in ``--workdir``) a tiny SavedModel (``tests/support/models.py:build_mymul``)
and its ``.tar.gz``, ``cachemgr add``s it to a fresh store under a loopback handle
(``http://127.0.0.1:9/bench/mymul/1``: nothing listens there, so a miss would fail fast and stay
on this machine) and extracts the same archive into a plain ``TFHUB_CACHE_DIR/<sha1(handle)>``.

Then, alternating for ``--rounds`` rounds, two children (registering the shim is global):

- ``plain``: tensorflow_hub alone, ``TFHUB_CACHE_DIR`` = the plain directory;
- ``shim``: ``import cachemgr.shim``, ``TFHUB_CACHE_DIR`` = the store's view, ``CACHEMGR_SOCKET``
  pointing at nothing (a hit must not need the daemon; a miss would warn, and warnings are errors).

Each child imports TF, says ready and waits for ``go`` (sent once the machine is idle), then
times ``hub.resolve(handle)`` ``--iterations`` times after ``--warmup`` calls, checks the path,
and times one ``hub.load(handle)`` end to end (and calls the model). The shim child also times
the pieces of its hit path. Reported: per-call median / p99 / mean in microseconds (medians over
rounds), shim minus plain (target < 1000 us), and the ``hub.load`` seconds.

Exit status: 0 when every resolve gave the expected path and the model answered right, 1
otherwise, 2 when a child failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.bench_shim_hit
    from benchmarks import harness
else:  # run as a script: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]

HANDLE = "http://127.0.0.1:9/bench/mymul/1"
INIT = 3.0
KINDS = ("plain", "shim")
OVERHEAD_TARGET_US = 1000.0
CHILD_TIMEOUT = 180.0


# ---------------------------------------------------------------------------------------
# The timing child
# ---------------------------------------------------------------------------------------
def _time_calls(fn: Any, arg: Any, n: int) -> list[float]:
    """Microseconds of each of ``n`` calls of ``fn(arg)``."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn(arg)
        out.append((clock() - t0) / 1000)
    return out


def child_time(kind: str, handle: str, expected: str, iterations: str, warmup: str) -> None:
    import warnings

    import tensorflow_hub as hub

    if kind == "shim":
        from tensorflow_hub import registry

        import cachemgr.shim  # noqa: F401 - the public name users import: it registers the shim
        from cachemgr.client import shim  # the same module (cachemgr.shim is an alias), typed

        if not (shim._registered and isinstance(registry.resolver._impls[-1], shim.CachemgrResolver)):
            raise SystemExit("the cachemgr shim is not the first resolver")
        warnings.simplefilter("error", RuntimeWarning)  # a miss would warn and fall back: fail instead
    harness.await_go()
    t0 = time.perf_counter_ns()
    first = hub.resolve(handle)
    first_us = (time.perf_counter_ns() - t0) / 1000
    if first != expected:
        raise SystemExit(f"hub.resolve gave {first!r}, expected {expected!r}")
    _time_calls(hub.resolve, handle, int(warmup))
    calls = _time_calls(hub.resolve, handle, int(iterations))
    if hub.resolve(handle) != expected:
        raise SystemExit("hub.resolve changed its answer")
    parts: dict[str, dict[str, float]] = {}
    if kind == "shim":  # where the shim's time goes (each piece alone, same iteration count)
        import hashlib as hl

        cache_dir = os.environ["TFHUB_CACHE_DIR"]
        name = hl.sha1(handle.encode()).hexdigest()
        path = os.path.join(cache_dir, name)
        resolver = registry.resolver._impls[-1]
        n = int(iterations)
        parts = {
            "resolver_call": harness.percentiles(_time_calls(resolver, handle, n)),
            "nonempty_dir": harness.percentiles(_time_calls(shim._nonempty_dir, path, n)),
            "record_use": harness.percentiles(_time_calls(lambda _: shim._record_use(cache_dir, name), None, n)),
        }
    import tensorflow as tf

    t0 = time.perf_counter_ns()
    model = hub.load(handle)
    load_s = (time.perf_counter_ns() - t0) / 1e9
    answer = float(model(tf.constant([2.0]))[0])
    harness.emit({"first_call_us": first_us, "calls_us": harness.percentiles(calls), "load_s": load_s, "answer": answer,
             "parts_us": parts, "path": first})


CHILDREN = {"time": child_time}


# ---------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------
def prepare(workdir: Path, env: dict[str, str]) -> tuple[Path, Path, Path]:
    """A store with the model under HANDLE and a plain hub cache with the same model extracted."""
    [(_model, archive)] = harness.ensure_small_models(workdir, [INIT], env)
    scratch = workdir / "shimhit"
    shutil.rmtree(scratch, ignore_errors=True)
    home, plain = scratch / "home", scratch / "tfhub"
    harness.cachemgr_add(home, HANDLE, archive, env)
    name = hashlib.sha1(HANDLE.encode()).hexdigest()
    (plain / name).mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(plain / name, filter="data")
    (plain / f"{name}.descriptor.txt").write_text(f"Module: {HANDLE}\n")
    if not (home / "view" / name).is_dir():
        raise harness.ChildError(f"cachemgr add did not link view/{name}")
    return scratch, home, plain


def run_kind(kind: str, args: argparse.Namespace, env: dict[str, str], scratch: Path, home: Path, plain: Path,
             gate: harness.QuietGate) -> tuple[dict[str, Any], bool]:
    name = hashlib.sha1(HANDLE.encode()).hexdigest()
    if kind == "plain":
        cache = plain
        child_env = {**env, "TFHUB_CACHE_DIR": str(plain)}
    else:
        cache = home / "view"
        child_env = {**env, "TFHUB_CACHE_DIR": str(cache), "CACHEMGR_SOCKET": str(scratch / "no-daemon.sock")}
    cmd = harness.child_cmd(__file__, "time", kind, HANDLE, str(cache / name), str(args.iterations), str(args.warmup))
    child = harness.ChildPipe(cmd, child_env, scratch / f"{kind}.err", stdin=True)
    try:
        harness.wait_ready([child], kind, CHILD_TIMEOUT)
        quiet = gate.wait()
        busy = harness.host_busy_seconds()
        start = time.perf_counter()
        child.send("go\n")
        [doc] = harness.wait_results([child], kind, CHILD_TIMEOUT)
        wall = time.perf_counter() - start
        busy = harness.host_busy_seconds() - busy
        harness.reap(child.proc)
        doc["other_load"] = max(0.0, busy - wall) / wall  # the child keeps about one core busy
        return doc, quiet
    finally:
        child.close()


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(kind: str, key: str) -> float:
        return float(statistics.median(r["calls_us"][key] for r in runs[kind]))

    s: dict[str, Any] = {}
    for kind in KINDS:
        s[kind] = {
            "median_us": med(kind, "p50"),
            "p99_us": med(kind, "p99"),
            "mean_us": med(kind, "mean"),
            "min_us": med(kind, "min"),
            "max_us": max(r["calls_us"]["max"] for r in runs[kind]),
            "first_call_us": statistics.median(r["first_call_us"] for r in runs[kind]),
            "hub_load_s": statistics.median(r["load_s"] for r in runs[kind]),
            "median_us_per_round": [r["calls_us"]["p50"] for r in runs[kind]],
        }
    parts = [r["parts_us"] for r in runs["shim"] if r.get("parts_us")]
    s["shim"]["parts_median_us"] = {k: statistics.median(p[k]["p50"] for p in parts) for k in parts[0]} if parts else {}
    s["overhead_median_us"] = s["shim"]["median_us"] - s["plain"]["median_us"]
    s["overhead_p99_us"] = s["shim"]["p99_us"] - s["plain"]["p99_us"]
    s["overhead_target_us"] = OVERHEAD_TARGET_US
    s["overhead_ok"] = s["overhead_median_us"] < OVERHEAD_TARGET_US and s["overhead_p99_us"] < OVERHEAD_TARGET_US
    s["other_load_cores_max"] = max(r["other_load"] for rs in runs.values() for r in rs)
    return s


def print_table(s: dict[str, Any], args: argparse.Namespace) -> None:
    p, m = s["plain"], s["shim"]
    print(f"hub.resolve on a cache hit, {args.iterations} calls after {args.warmup} warm-up, "
          f"medians of {args.rounds} rounds (microseconds)")
    rows = [("", "shim", "plain hub", "shim-plain")]
    for label, key in (("median", "median_us"), ("p99", "p99_us"), ("mean", "mean_us"), ("min", "min_us"),
                       ("max (worst round)", "max_us"), ("first call in process", "first_call_us")):
        rows.append((label, f"{m[key]:.1f}", f"{p[key]:.1f}", f"{m[key] - p[key]:+.1f}"))
    rows.append(("hub.load end to end (s)", f"{m['hub_load_s']:.3f}", f"{p['hub_load_s']:.3f}",
                 f"{m['hub_load_s'] - p['hub_load_s']:+.3f}"))
    width = max(len(r[0]) for r in rows)
    for a, b, c, d in rows:
        print(f"{a:<{width}}  {b:>10}  {c:>10}  {d:>10}")
    ok = "OK" if s["overhead_ok"] else "MISSED"
    print(f"shim overhead per hit: median {s['overhead_median_us']:+.1f} us, p99 {s['overhead_p99_us']:+.1f} us "
          f"(target < {OVERHEAD_TARGET_US:.0f} us: {ok})")
    if m["parts_median_us"]:
        pieces = ", ".join(f"{k} {v:.1f}" for k, v in m["parts_median_us"].items())
        print(f"shim hit path, each piece timed alone, medians (us): {pieces}")
    if s["other_load_cores_max"] > 0.3:
        print(f"WARNING: other processes kept up to {s['other_load_cores_max']:.1f} cores busy: the timings are noisy")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--iterations", type=int, default=2000, help="timed hub.resolve calls per child")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each runs both children, order alternating)")
    harness.add_common_args(p, quiet_wait=30.0)
    args = p.parse_args(argv)
    if not (2 <= args.iterations <= 200_000 and 0 <= args.warmup <= 100_000 and 1 <= args.rounds <= 20):
        p.error("--iterations 2..200000, --warmup 0..100000, --rounds 1..20")
    return args


def bench(args: argparse.Namespace) -> int:
    workdir, env = harness.bench_env(args.workdir)
    try:
        scratch, home, plain = prepare(workdir, env)
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    gate = harness.QuietGate(args.quiet_wait)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    problems: list[str] = []
    busy_starts = 0
    try:
        for n in range(args.rounds):
            for kind in KINDS if n % 2 == 0 else KINDS[::-1]:
                doc, quiet = run_kind(kind, args, env, scratch, home, plain, gate)
                busy_starts += not quiet
                runs[kind].append(doc)
                if abs(doc["answer"] - 2 * INIT) > 1e-6:
                    problems.append(f"{kind} round {n}: the model answered {doc['answer']} (want {2 * INIT})")
                c = doc["calls_us"]
                harness.log(f"round {n} {kind:5}: median {c['p50']:.1f} us p99 {c['p99']:.1f} us, first call "
                            f"{doc['first_call_us']:.0f} us, hub.load {doc['load_s']:.3f} s, other load "
                            f"{doc['other_load']:.1f} cores")
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    summary = summarize(runs)
    summary["runs_started_busy"] = busy_starts
    if args.json:
        print(json.dumps({"config": {"handle": HANDLE, "iterations": args.iterations, "warmup": args.warmup,
                                     "rounds": args.rounds, "cpus": os.cpu_count()},
                          "summary": summary, "problems": problems, "runs": runs}, indent=2))
    else:
        print_table(summary, args)
        if busy_starts:
            print(f"WARNING: {busy_starts} runs started on a busy machine")
        for p in problems:
            print(f"  PROBLEM: {p}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return harness.dispatch_child(argv[1:], CHILDREN)
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
