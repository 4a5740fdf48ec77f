"""Benchmark ``cachemgr pull`` against plain ``tensorflow_hub.resolve`` on a big local archive.

    python benchmarks/bench_pull.py [--size-mb 200] [--runs 3] [--json] [--workdir DIR]

Builds (once, cached under ``--workdir``) a real TensorFlow SavedModel of about ``--size-mb``
MiB of float32 weights, packs it as a TF Hub ``.tar.gz``, serves it from a separate process
on 127.0.0.1 (random port, ``sendfile``), then alternates for ``--runs`` rounds:

- ``cachemgr``: a child that imports cachemgr, then times ``Puller(...).pull_many([url])``
  into a fresh empty store (the primary cachemgr figure);
- ``hub``: a child that imports tensorflow_hub, then times ``hub.resolve(url)`` with
  ``TFHUB_CACHE_DIR`` a fresh empty dir (the primary hub figure);
- ``cli``: the ``cachemgr --home FRESH pull URL`` command as a whole (wall clock only).

Every child is also timed as a whole process (wall clock, secondary: the hub child's includes
importing TensorFlow) and its peak RSS is read from ``os.wait4``. The children also report
the peak RSS *during* the timed call (VmHWM reset through ``/proc/self/clear_refs``, minus
VmRSS before it). ``sync`` runs before each timed child. After each round the file list and
sizes of the cachemgr snapshot (``cachemgr path``) are compared with hub's extracted dir.
Children also report the CPU time of the timed call, and each run records how many cores
other processes kept busy meanwhile (``/proc/stat``); before each run the script waits a
little for an idle machine (``--quiet-wait``), as other load skews the threaded cachemgr most.

Exit status: 0 when every pull succeeded and the trees matched (targets are only reported),
1 on a mismatch, 2 when a child failed.

This module is the pull benchmark itself (its children, its rounds, its report); the helpers
it shares with the other benchmarks (child environment and runner, idle-machine gate, building
and serving the archive, tree comparison) are in ``harness/``. Besides its own children
(``cachemgr``, ``hub``), ``--child`` here also runs the harness's ``build`` and ``serve``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.bench_pull
    from benchmarks import harness
else:  # run as a script: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]

RATIO_TARGET = 0.9
RSS_TARGET_MIB = 200.0
KINDS = ("cachemgr", "hub", "cli")


# ---------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------
def child_cachemgr(url: str, home: str) -> None:
    """Pull ``url`` into the store ``home`` in-process, the way ``cachemgr pull`` does."""
    import asyncio

    from cachemgr.fetch.pull import Puller
    from cachemgr.settings import load_settings
    from cachemgr.store.objects import open_store

    settings = load_settings(os.environ, None, {"home": home})
    store = open_store(settings)
    before = harness.proc_status_kib()
    reset = harness.reset_peak_rss()
    cpu = harness.cpu_seconds()
    start = time.perf_counter()
    puller = Puller(settings, store)
    try:
        results = asyncio.run(puller.pull_many([url]))
    finally:
        puller.close()
    seconds = time.perf_counter() - start
    cpu = harness.cpu_seconds() - cpu
    after = harness.proc_status_kib()
    result = results[0]
    if result.error is not None or result.ref is None:
        raise SystemExit(f"cachemgr pull failed: {result.error}")
    harness.emit({
        "seconds": seconds,
        "cpu_seconds": cpu,
        "path": str(store.snapshot_path(result.ref.manifest)),
        "files": result.ref.files,
        "rss_before_kib": before.get("VmRSS", 0),
        "hwm_during_kib": after.get("VmHWM", 0) if reset else None,
    })


def child_hub(url: str) -> None:
    """``hub.resolve(url)`` in-process; TFHUB_CACHE_DIR comes from the environment."""
    import tensorflow_hub as hub

    before = harness.proc_status_kib()
    reset = harness.reset_peak_rss()
    cpu = harness.cpu_seconds()
    start = time.perf_counter()
    path = hub.resolve(url)
    seconds = time.perf_counter() - start
    cpu = harness.cpu_seconds() - cpu
    after = harness.proc_status_kib()
    harness.emit({
        "seconds": seconds,
        "cpu_seconds": cpu,
        "path": str(path),
        "rss_before_kib": before.get("VmRSS", 0),
        "hwm_during_kib": after.get("VmHWM", 0) if reset else None,
    })


# Besides its own, the harness's children (build, serve): `bench_pull.py --child serve` as the README has it.
CHILDREN: dict[str, Callable[..., object]] = {"cachemgr": child_cachemgr, "hub": child_hub, **harness.CHILDREN}


# ---------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------
@dataclass
class Run:
    kind: str  # "cachemgr" (in-process child), "hub" (in-process child) or "cli"
    round: int
    wall_s: float
    peak_rss_mib: float  # ru_maxrss of the whole child, from os.wait4
    cpu_s: float  # user + system CPU of the whole child, from os.wait4
    other_load: float  # cores busy with anything but this child and the server meanwhile
    quiet_start: bool  # the machine was idle when the run started (see harness.QuietGate)
    inproc_s: float | None = None
    inproc_cpu_s: float | None = None
    rss_before_mib: float | None = None
    peak_during_mib: float | None = None  # VmHWM during the timed call
    path: str | None = None


def one_round(
    n: int, url: str, runs_dir: Path, env: dict[str, str], server: harness.Server, gate: harness.QuietGate
) -> tuple[list[Run], list[str], int]:
    """One pull with each of KINDS (order rotated per round), then the tree comparison."""
    homes = {kind: runs_dir / f"{kind}-{n}" for kind in KINDS}
    for path in homes.values():
        shutil.rmtree(path, ignore_errors=True)
    order = KINDS[n % len(KINDS):] + KINDS[: n % len(KINDS)]
    runs: list[Run] = []
    for kind in order:
        home = homes[kind]
        os.sync()
        quiet = gate.wait()
        if kind == "cachemgr":
            res = harness.run_child(harness.child_cmd(__file__, "cachemgr", url, str(home)), env, server=server)
        elif kind == "hub":
            home.mkdir(parents=True)
            res = harness.run_child(harness.child_cmd(__file__, "hub", url), {**env, "TFHUB_CACHE_DIR": str(home)},
                                    server=server)
        else:
            res = harness.run_child([*harness.cachemgr_cmd(), "--home", str(home), "pull", url], env, server=server)
        rep = res.report
        hwm = rep.get("hwm_during_kib")
        run = Run(
            kind, n, res.wall_s, res.peak_rss_mib, res.cpu_s, res.other_load, quiet,
            inproc_s=rep.get("seconds"),
            inproc_cpu_s=rep.get("cpu_seconds"),
            rss_before_mib=rep["rss_before_kib"] / 1024 if "rss_before_kib" in rep else None,
            peak_during_mib=hwm / 1024 if hwm else None,
            path=rep.get("path"),
        )
        runs.append(run)
        inproc = (f"  in-process {run.inproc_s:.2f}s (cpu {run.inproc_cpu_s:.2f}s)"
                  if run.inproc_s is not None and run.inproc_cpu_s is not None else "")
        harness.log(f"round {n} {kind:8} wall {run.wall_s:5.2f}s{inproc}  peak RSS {run.peak_rss_mib:.0f} MiB"
                    f"  other load {run.other_load:.1f} cores")
    # Correctness: the CLI's snapshot (found with `cachemgr path`) against hub's directory.
    snap = harness.run_child([*harness.cachemgr_cmd(), "--home", str(homes["cli"]), "path", url], env, timed=False)
    snapshot = Path(snap.stdout.strip().splitlines()[-1])
    hub_path = next(r.path for r in runs if r.kind == "hub")
    assert hub_path is not None
    problems = harness.compare_trees(snapshot, Path(hub_path))
    unpacked = sum(harness.tree_listing(snapshot).values())
    in_proc = next(r.path for r in runs if r.kind == "cachemgr")
    if in_proc is not None and harness.tree_listing(Path(in_proc)) != harness.tree_listing(snapshot):
        problems.append("the in-process pull and the CLI pull gave different trees")
    for path in homes.values():
        shutil.rmtree(path, ignore_errors=True)
    return runs, problems, unpacked


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[Run], archive_bytes: int, unpacked_bytes: int) -> dict[str, Any]:
    def pick(kind: str, attr: str) -> list[float]:
        return [v for r in runs if r.kind == kind and (v := getattr(r, attr)) is not None]

    def growth(kind: str) -> float | None:
        values = [r.peak_during_mib - r.rss_before_mib for r in runs if r.kind == kind
                  and r.peak_during_mib is not None and r.rss_before_mib is not None]
        return max(values) if values else None

    cm_s, hub_s = median(pick("cachemgr", "inproc_s")), median(pick("hub", "inproc_s"))
    cm_cpu, hub_cpu = median(pick("cachemgr", "inproc_cpu_s")), median(pick("hub", "inproc_cpu_s"))
    walls = {kind: median(pick(kind, "wall_s")) for kind in KINDS}
    cm_rss = max(pick("cachemgr", "peak_rss_mib") + pick("cli", "peak_rss_mib"))
    ratio = cm_s / hub_s
    return {
        "archive_mib": archive_bytes / harness.MIB,
        "unpacked_mib": unpacked_bytes / harness.MIB,
        "cachemgr_median_s": cm_s,
        "hub_median_s": hub_s,
        "cachemgr_best_s": min(pick("cachemgr", "inproc_s")),
        "hub_best_s": min(pick("hub", "inproc_s")),
        "cachemgr_mib_per_s": archive_bytes / harness.MIB / cm_s,
        "hub_mib_per_s": archive_bytes / harness.MIB / hub_s,
        "ratio": ratio,
        "ratio_target": RATIO_TARGET,
        "ratio_ok": ratio <= RATIO_TARGET,
        "cachemgr_median_cpu_s": cm_cpu,
        "hub_median_cpu_s": hub_cpu,
        "cpu_ratio": cm_cpu / hub_cpu,
        "wall_median_s": {"cachemgr_child": walls["cachemgr"], "cachemgr_cli": walls["cli"],
                          "hub_child": walls["hub"]},
        "wall_ratio_cli_vs_hub": walls["cli"] / walls["hub"],
        "cachemgr_peak_rss_mib": cm_rss,
        "cachemgr_cli_peak_rss_mib": max(pick("cli", "peak_rss_mib")),
        "cachemgr_rss_growth_mib": growth("cachemgr"),
        "hub_peak_rss_mib": max(pick("hub", "peak_rss_mib")),
        "hub_rss_growth_mib": growth("hub"),
        "rss_target_mib": RSS_TARGET_MIB,
        "rss_ok": cm_rss < RSS_TARGET_MIB,
        "other_load_cores_max": max(r.other_load for r in runs),
        "runs_started_busy": sum(not r.quiet_start for r in runs),
    }


def print_table(s: dict[str, Any], runs: int) -> None:
    def fmt(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    w = s["wall_median_s"]
    rows = [
        ("", "cachemgr", "tf_hub"),
        (f"median in-process s ({runs} runs)", fmt(s["cachemgr_median_s"]), fmt(s["hub_median_s"])),
        ("best in-process s", fmt(s["cachemgr_best_s"]), fmt(s["hub_best_s"])),
        ("archive MiB/s (median)", fmt(s["cachemgr_mib_per_s"], ".0f"), fmt(s["hub_mib_per_s"], ".0f")),
        ("median in-process CPU s", fmt(s["cachemgr_median_cpu_s"]), fmt(s["hub_median_cpu_s"])),
        ("median whole-process wall s", f"{fmt(w['cachemgr_cli'])} (cli)", fmt(w["hub_child"])),
        ("peak RSS MiB (whole process)", fmt(s["cachemgr_peak_rss_mib"], ".0f"), fmt(s["hub_peak_rss_mib"], ".0f")),
        ("RSS growth during pull MiB", fmt(s["cachemgr_rss_growth_mib"], ".0f"),
         fmt(s["hub_rss_growth_mib"], ".0f")),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"archive {s['archive_mib']:.1f} MiB (.tar.gz), unpacked {s['unpacked_mib']:.1f} MiB")
    for label, a, b in rows:
        print(f"{label:<{width}}  {a:>14}  {b:>10}")
    ok = "OK" if s["ratio_ok"] else "MISSED"
    print(f"ratio cachemgr/hub, in-process medians: {s['ratio']:.2f}  (target <= {RATIO_TARGET}: {ok})")
    print(f"ratio cachemgr/hub, in-process CPU:     {s['cpu_ratio']:.2f}")
    print(f"ratio cachemgr cli/hub child, walls:    {s['wall_ratio_cli_vs_hub']:.2f}  (hub's includes importing TF)")
    ok = "OK" if s["rss_ok"] else "MISSED"
    print(f"cachemgr peak RSS {s['cachemgr_peak_rss_mib']:.0f} MiB (target < {RSS_TARGET_MIB:.0f}: {ok})")
    if s["other_load_cores_max"] > 0.25 or s["runs_started_busy"]:
        print(f"WARNING: other processes kept up to {s['other_load_cores_max']:.1f} cores busy during "
              "timed runs; the timings are noisy (the CPU figures less so)"
              f"; {s['runs_started_busy']} runs started on a busy machine")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mb", type=int, default=200, help="model size in MiB of float32 weights")
    p.add_argument("--runs", type=int, default=3, help="rounds (each pulls with all three)")
    p.add_argument("--rebuild", action="store_true", help="build the model archive again")
    harness.add_common_args(p, quiet_wait=45.0)
    args = p.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        p.error("--size-mb and --runs must be at least 1")
    return args


def bench(args: argparse.Namespace) -> int:
    workdir, env = harness.bench_env(args.workdir)
    root, archive = harness.ensure_archive(workdir, args.size_mb, args.rebuild, env)
    archive_bytes = archive.stat().st_size  # in the page cache now: every run serves it from memory
    harness.log("warming imports (tensorflow_hub, cachemgr), untimed")
    harness.run_child([sys.executable, "-c", "import tensorflow_hub"], env, timed=False)
    harness.run_child([sys.executable, "-c", "import cachemgr.fetch.pull"], env, timed=False)

    runs_dir = workdir / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir()
    try:
        server = harness.Server(root, env)
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    gate = harness.QuietGate(args.quiet_wait)
    url = f"http://127.0.0.1:{server.port}/{harness.URL_PATH}"
    harness.log(f"serving {archive} ({archive_bytes / harness.MIB:.1f} MiB) at {url}")
    all_runs: list[Run] = []
    problems: list[str] = []
    unpacked = 0
    try:
        for n in range(args.runs):
            runs, bad, unpacked = one_round(n, url, runs_dir, env, server, gate)
            all_runs += runs
            problems += [f"round {n}: {b}" for b in bad]
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    finally:
        server.stop()
        shutil.rmtree(runs_dir, ignore_errors=True)
    summary = summarize(all_runs, archive_bytes, unpacked)
    summary["trees_match"] = not problems
    summary["quiet_wait_s"] = gate.waited
    if args.json:
        doc = {
            "config": {"size_mb": args.size_mb, "runs": args.runs, "workdir": str(workdir),
                       "url": url, "archive": str(archive), "archive_bytes": archive_bytes,
                       "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "summary": summary,
            "problems": problems,
            "runs": [asdict(r) for r in all_runs],
        }
        print(json.dumps(doc, indent=2))
    else:
        print_table(summary, args.runs)
        print("trees match (file list and sizes, cachemgr vs hub): " + ("yes" if not problems else "NO"))
        for p in problems:
            print(f"  {p}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return harness.dispatch_child(argv[1:], CHILDREN)
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
