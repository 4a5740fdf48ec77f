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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
URL_PATH = "bench/big/1"
RATIO_TARGET = 0.9
RSS_TARGET_MIB = 200.0
KINDS = ("cachemgr", "hub", "cli")
QUIET_CORES = 0.2


# ---------------------------------------------------------------------------------------
# Helpers shared by the parent and the children (stdlib only: children import this module)
# ---------------------------------------------------------------------------------------
def proc_status_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process in KiB (Linux)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def emit(doc: dict[str, Any]) -> None:
    """Children report one JSON line on stdout, after anything else they printed."""
    sys.stdout.write("\n" + json.dumps(doc) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------
def child_cachemgr(url: str, home: str) -> None:
    """Pull ``url`` into the store ``home`` in-process, the way ``cachemgr pull`` does."""
    import asyncio

    from cachemgr.pull import Puller, open_store
    from cachemgr.settings import load_settings

    settings = load_settings(os.environ, None, {"home": home})
    store = open_store(settings)
    before = proc_status_kib()
    reset = reset_peak_rss()
    cpu = cpu_seconds()
    start = time.perf_counter()
    puller = Puller(settings, store)
    try:
        results = asyncio.run(puller.pull_many([url]))
    finally:
        puller.close()
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    after = proc_status_kib()
    result = results[0]
    if result.error is not None or result.ref is None:
        raise SystemExit(f"cachemgr pull failed: {result.error}")
    emit({
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

    before = proc_status_kib()
    reset = reset_peak_rss()
    cpu = cpu_seconds()
    start = time.perf_counter()
    path = hub.resolve(url)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    after = proc_status_kib()
    emit({
        "seconds": seconds,
        "cpu_seconds": cpu,
        "path": str(path),
        "rss_before_kib": before.get("VmRSS", 0),
        "hwm_during_kib": after.get("VmHWM", 0) if reset else None,
    })


def child_build(dest: str, size_bytes: int) -> None:
    """Build the big SavedModel and its TF Hub ``.tar.gz`` at ``dest`` (atomically)."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.models import build_big_model, make_archive

    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-model-", dir=target.parent) as tmp:
        model_dir = build_big_model(Path(tmp) / "model", size_bytes)
        partial = Path(tmp) / "archive.tar.gz"
        make_archive(model_dir, partial, "gz")
        os.replace(partial, target)


def child_serve(root: str) -> None:
    """Serve ``root`` on 127.0.0.1 (random port, printed first) with ``sendfile``."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def copyfile(self, source: Any, outputfile: Any) -> None:
            self.connection.sendfile(source)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Handler, directory=root)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


CHILDREN = {"cachemgr": child_cachemgr, "hub": child_hub, "build": child_build, "serve": child_serve}


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
    quiet_start: bool  # the machine was idle when the run started (see QuietGate)
    inproc_s: float | None = None
    inproc_cpu_s: float | None = None
    rss_before_mib: float | None = None
    peak_during_mib: float | None = None  # VmHWM during the timed call
    path: str | None = None


@dataclass
class ChildResult:
    wall_s: float
    peak_rss_mib: float
    cpu_s: float
    other_load: float
    stdout: str
    report: dict[str, Any] = field(default_factory=dict)


class ChildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def self_cmd(kind: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", kind, *args]


def run_child(
    cmd: list[str], env: dict[str, str], timed: bool = True, server: Server | None = None
) -> ChildResult:
    """Run ``cmd`` to completion; wall time, CPU time and ru_maxrss via ``os.wait4``.

    Also estimates the load of everything else on the machine meanwhile (host busy time from
    /proc/stat minus this child's and the archive server's CPU), to flag noisy runs.
    """
    if timed:
        os.sync()
    with tempfile.TemporaryFile() as err:
        busy = host_busy_seconds()
        served = server.cpu_seconds() if server else 0.0
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO_ROOT)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy = host_busy_seconds() - busy
        served = (server.cpu_seconds() if server else 0.0) - served
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace")[-3000:]
            raise ChildError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    text = out.decode("utf-8", "replace")
    report: dict[str, Any] = {}
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, busy - cpu - served) / wall if wall > 0 else 0.0
    return ChildResult(wall, usage.ru_maxrss / 1024, cpu, other, text, report)


def add_common_args(p: argparse.ArgumentParser, quiet_wait: float) -> None:
    """--json, --workdir and --quiet-wait, which every benchmark takes."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cachemgr-bench"),
                   help="where built models are cached and the runs write")
    p.add_argument("--quiet-wait", type=float, default=quiet_wait, metavar="SECONDS",
                   help="total time to spend waiting for an idle machine before runs (0: never wait)")


def bench_env(workdir: Path, extra: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """The resolved work directory (created) and the environment for benchmark children."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    empty_config = workdir / "empty-config.toml"
    empty_config.write_text("")
    return workdir, child_env(extra or {}, empty_config)


def child_env(extra: dict[str, str], empty_config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHEMGR_", "TFHUB_"))}
    env.update(
        CACHEMGR_CONFIG=str(empty_config),  # no user/system config (mirrors...) in the way
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def ensure_archive(workdir: Path, size_mb: int, rebuild: bool, env: dict[str, str]) -> tuple[Path, Path]:
    """The served root and the archive inside it (``ROOT/bench/big/1``), built if missing."""
    root = workdir / f"www-{size_mb}mb"
    archive = root / URL_PATH
    if rebuild and archive.exists():
        archive.unlink()
    if not archive.is_file():
        log(f"building a {size_mb} MiB SavedModel and its .tar.gz (once; cached at {archive})")
        start = time.perf_counter()
        run_child(self_cmd("build", str(archive), str(size_mb * MIB)), env, timed=False)
        log(f"built in {time.perf_counter() - start:.1f}s")
    return root, archive


class QuietGate:
    """Before each timed run, wait until the machine is idle (others' load is noise).

    Waits for two consecutive 0.5 s windows with under ``QUIET_CORES`` cores busy, spending
    at most ``budget`` seconds over the whole benchmark; after that runs start regardless.
    """

    def __init__(self, budget: float) -> None:
        self.remaining = budget
        self.waited = 0.0

    def wait(self) -> bool:
        quiet_windows = 0
        while True:
            if self.remaining <= 0:
                return False
            start, busy = time.perf_counter(), host_busy_seconds()
            time.sleep(0.5)
            elapsed = time.perf_counter() - start
            self.remaining -= elapsed
            self.waited += elapsed
            quiet_windows = quiet_windows + 1 if (host_busy_seconds() - busy) / elapsed < QUIET_CORES else 0
            if quiet_windows >= 2:
                return True


class Server:
    """The archive server, a separate process on 127.0.0.1."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            self_cmd("serve", str(root)), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            self.stop()
            raise ChildError(f"archive server did not start (said {line!r})")
        self.port = int(line)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (utime + stime from /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def tree_listing(root: Path) -> dict[str, int]:
    """Relative path -> size of every regular file below ``root``."""
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.stat().st_size
    return out


def compare_trees(snapshot: Path, hub_dir: Path) -> list[str]:
    """Differences between the cachemgr snapshot and hub's extracted directory."""
    ours, theirs = tree_listing(snapshot), tree_listing(hub_dir)
    problems = [f"only in cachemgr: {p}" for p in sorted(ours.keys() - theirs.keys())]
    problems += [f"only in hub: {p}" for p in sorted(theirs.keys() - ours.keys())]
    problems += [
        f"size differs: {p} ({ours[p]} vs {theirs[p]})"
        for p in sorted(ours.keys() & theirs.keys()) if ours[p] != theirs[p]
    ]
    if not ours:
        problems.append("cachemgr snapshot is empty")
    return problems


def cachemgr_cmd() -> list[str]:
    exe = shutil.which("cachemgr")
    return [exe] if exe else [sys.executable, "-m", "cachemgr"]


def one_round(
    n: int, url: str, runs_dir: Path, env: dict[str, str], server: Server, gate: QuietGate
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
            res = run_child(self_cmd("cachemgr", url, str(home)), env, server=server)
        elif kind == "hub":
            home.mkdir(parents=True)
            res = run_child(self_cmd("hub", url), {**env, "TFHUB_CACHE_DIR": str(home)}, server=server)
        else:
            res = run_child([*cachemgr_cmd(), "--home", str(home), "pull", url], env, server=server)
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
        log(f"round {n} {kind:8} wall {run.wall_s:5.2f}s{inproc}  peak RSS {run.peak_rss_mib:.0f} MiB"
            f"  other load {run.other_load:.1f} cores")
    # Correctness: the CLI's snapshot (found with `cachemgr path`) against hub's directory.
    snap = run_child([*cachemgr_cmd(), "--home", str(homes["cli"]), "path", url], env, timed=False)
    snapshot = Path(snap.stdout.strip().splitlines()[-1])
    hub_path = next(r.path for r in runs if r.kind == "hub")
    assert hub_path is not None
    problems = compare_trees(snapshot, Path(hub_path))
    unpacked = sum(tree_listing(snapshot).values())
    in_proc = next(r.path for r in runs if r.kind == "cachemgr")
    if in_proc is not None and tree_listing(Path(in_proc)) != tree_listing(snapshot):
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
        "archive_mib": archive_bytes / MIB,
        "unpacked_mib": unpacked_bytes / MIB,
        "cachemgr_median_s": cm_s,
        "hub_median_s": hub_s,
        "cachemgr_best_s": min(pick("cachemgr", "inproc_s")),
        "hub_best_s": min(pick("hub", "inproc_s")),
        "cachemgr_mib_per_s": archive_bytes / MIB / cm_s,
        "hub_mib_per_s": archive_bytes / MIB / hub_s,
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
    add_common_args(p, quiet_wait=45.0)
    args = p.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1:
        p.error("--size-mb and --runs must be at least 1")
    return args


def bench(args: argparse.Namespace) -> int:
    workdir, env = bench_env(args.workdir)
    root, archive = ensure_archive(workdir, args.size_mb, args.rebuild, env)
    archive_bytes = archive.stat().st_size
    with archive.open("rb") as fh:  # warm the page cache: every run then serves from memory
        while fh.read(8 * MIB):
            pass
    log("warming imports (tensorflow_hub, cachemgr), untimed")
    run_child([sys.executable, "-c", "import tensorflow_hub"], env, timed=False)
    run_child([sys.executable, "-c", "import cachemgr.pull"], env, timed=False)

    runs_dir = workdir / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir()
    try:
        server = Server(root, env)
    except ChildError as exc:
        log(str(exc))
        return 2
    gate = QuietGate(args.quiet_wait)
    url = f"http://127.0.0.1:{server.port}/{URL_PATH}"
    log(f"serving {archive} ({archive_bytes / MIB:.1f} MiB) at {url}")
    all_runs: list[Run] = []
    problems: list[str] = []
    unpacked = 0
    try:
        for n in range(args.runs):
            runs, bad, unpacked = one_round(n, url, runs_dir, env, server, gate)
            all_runs += runs
            problems += [f"round {n}: {b}" for b in bad]
    except ChildError as exc:
        log(str(exc))
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
        kind, *rest = argv[1:]
        fn: Any = CHILDREN[kind]
        if kind == "build":
            fn(rest[0], int(rest[1]))
        else:
            fn(*rest)
        return 0
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
