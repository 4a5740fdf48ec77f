"""Thundering herd: N processes ``hub.resolve(URL)`` the same uncached ~200 MB model at once.

    python benchmarks/bench_herd.py [--procs 8] [--rounds 2] [--size-mb 200] [--json]

The archive (``tests/support/models.py:build_big_model`` + ``make_archive``, cached in
``--workdir`` like bench_pull.py) is served from a separate process on 127.0.0.1 that answers
``/bench/big/1?tf-hub-format=compressed`` and counts the downloads it serves. Each round runs:

- ``hub``: N plain tensorflow_hub processes sharing one fresh ``TFHUB_CACHE_DIR`` (hub's lock
  protocol: one downloads, the others poll the lock file every 5 s);
- ``cachemgr``: a fresh store with ``cachemgr daemon`` already running (started before the
  clock), and N processes that ``import cachemgr.shim`` with ``TFHUB_CACHE_DIR=HOME/view`` and
  ``CACHEMGR_SOCKET`` set (the daemon fetches once for all of them).

Every child imports tensorflow_hub (and the shim) first, prints ``ready`` and blocks reading
its stdin. When all are ready (and the machine is idle, see harness.QuietGate) the parent
notes ``go = time.time()`` and writes ``go`` to each. A child's figure is its ``time.time()``
after ``hub.resolve`` returned minus ``go``. Reported: first and last process (medians over
rounds), last(cachemgr)/last(hub) (target <= 0.4), and the downloads the server saw.

Exit status: 0 when every resolve returned a non-empty directory, the trees matched and
cachemgr caused exactly one download per round; 1 otherwise; 2 when a child failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.bench_herd
    from benchmarks import harness
    from benchmarks.harness.daemons import Daemon
else:  # run as a script: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]
    from harness.daemons import Daemon  # type: ignore[no-redef]

KINDS = ("hub", "cachemgr")
RATIO_TARGET = 0.4
CHILD_TIMEOUT = 120.0  # per phase (import, resolve); hub's waiters poll every 5 s


# ---------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------
def child_serve(root: str) -> None:
    """Serve ``root`` on 127.0.0.1 (port printed first); only ``?tf-hub-format=compressed``.

    ``GET /_stats`` answers the counts as JSON: ``downloads`` (archive GETs answered 200),
    ``completed`` (of those, fully sent) and ``requests`` (every other request).
    """
    import http.server
    import urllib.parse

    base = Path(root).resolve()
    counts = {"downloads": 0, "completed": 0, "requests": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urllib.parse.urlsplit(self.path)
            if parts.path == "/_stats":
                with lock:
                    body = json.dumps(counts).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            target = (base / parts.path.lstrip("/")).resolve()
            query = urllib.parse.parse_qs(parts.query)
            if (not target.is_relative_to(base) or not target.is_file()
                    or query.get("tf-hub-format") != ["compressed"]):
                with lock:
                    counts["requests"] += 1
                self.send_error(404)
                return
            with lock:
                counts["downloads"] += 1
            with target.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                self.connection.sendfile(fh)
            with lock:
                counts["completed"] += 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


def child_worker(kind: str, url: str) -> None:
    """Import hub (+ the shim), say ready, wait for ``go`` on stdin, then time ``hub.resolve``."""
    import tensorflow_hub as hub

    if kind == "cachemgr":
        from tensorflow_hub import registry

        import cachemgr.shim  # noqa: F401 - the public name users import: it registers the shim
        from cachemgr.client import shim  # the same module (cachemgr.shim is an alias), typed

        impls = registry.resolver._impls
        if not (shim._registered and isinstance(impls[-1], shim.CachemgrResolver)):
            raise SystemExit("the cachemgr shim is not the first resolver")
    harness.await_go()
    start_wall, start = time.time(), time.monotonic()
    path = hub.resolve(url)
    seconds = time.monotonic() - start
    end_wall = time.time()
    harness.emit({"start_wall": start_wall, "end_wall": end_wall, "seconds": seconds, "path": str(path),
                 "entries": len(os.listdir(path)), "pid": os.getpid()})


CHILDREN: dict[str, Callable[..., object]] = {"serve": child_serve, "worker": child_worker}


# ---------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------
@dataclass
class Herd:
    kind: str
    round: int
    procs: int
    first_s: float  # min over children of (end - go)
    last_s: float  # max over children of (end - go)
    median_s: float
    times_s: list[float]  # per child, end - go, sorted
    start_skew_ms: float  # last child's start - go (how long the barrier took to release all)
    downloads: int  # archive GETs the server saw during the round
    completed: int
    other_requests: int
    quiet_start: bool
    other_load: float  # cores busy with anything but this herd, the server and the daemon
    ready_s: float = 0.0  # spawning the children until all had imported tensorflow_hub (untimed)
    daemon_fetches: int | None = None
    paths: list[str] = field(default_factory=list)


class CountingServer(harness.Server):
    """The harness's archive Server, run with this file's counting ``serve`` child."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        super().__init__(root, env, harness.child_cmd(__file__, "serve", str(root)))

    def stats(self) -> dict[str, int]:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}/_stats", timeout=10) as resp:
            doc: dict[str, int] = json.loads(resp.read())
        return doc


def run_herd(kind: str, n: int, args: argparse.Namespace, url: str, env: dict[str, str], rundir: Path,
             server: CountingServer, gate: harness.QuietGate) -> tuple[Herd, list[str]]:
    """One herd of ``args.procs`` children of ``kind``; returns it and the problems seen."""
    work = rundir / f"{kind}-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    daemon: Daemon | None = None
    children: list[harness.ChildPipe] = []
    problems: list[str] = []
    try:
        if kind == "hub":
            cache = work / "tfhub"
            cache.mkdir()
            child_env = {**env, "TFHUB_CACHE_DIR": str(cache)}
        else:
            home = work / "home"
            daemon = Daemon(home, env)
            child_env = {**env, "TFHUB_CACHE_DIR": str(home / "view"), "CACHEMGR_SOCKET": str(daemon.sock)}
        spawned = time.monotonic()
        for i in range(args.procs):
            cmd = harness.child_cmd(__file__, "worker", kind, url)
            children.append(harness.ChildPipe(cmd, child_env, work / f"child{i}.err", stdin=True))
        harness.wait_ready(children, kind, CHILD_TIMEOUT)
        ready_s = time.monotonic() - spawned
        os.sync()
        quiet = gate.wait()
        before = server.stats()
        busy = harness.host_busy_seconds()
        cpu_before = server.cpu_seconds() + (daemon.cpu_seconds() if daemon else 0.0)
        cpu_before += sum(harness.proc_cpu_seconds(c.proc.pid) for c in children)
        go = time.time()
        for c in children:
            c.send("go\n")
        reports = harness.wait_results(children, kind, CHILD_TIMEOUT)
        cpu = server.cpu_seconds() + (daemon.cpu_seconds() if daemon else 0.0) - cpu_before
        after = server.stats()
        for c in children:  # reap them here for their CPU time (they exit right after reporting)
            cpu += harness.reap(c.proc)
        wall = time.time() - go
        busy = harness.host_busy_seconds() - busy
        times = sorted(r["end_wall"] - go for r in reports)
        skew = max(r["start_wall"] for r in reports) - go
        paths = sorted({r["path"] for r in reports})
        if any(r["entries"] == 0 for r in reports):
            problems.append(f"{kind} round {n}: a resolve returned an empty directory")
        if len({os.path.realpath(p) for p in paths}) != 1:
            problems.append(f"{kind} round {n}: children got different directories: {paths}")
        fetches = None
        if daemon is not None:
            status, doc = daemon.call("GET", "/v1/status")
            fetches = doc.get("fetches") if status == 200 else None
        downloads = after["downloads"] - before["downloads"]
        # Other load: the host's busy time beyond what the server, the daemon and the children used
        # (the children's CPU up to their exit, which includes TF's teardown, minus what they had at go).
        other = max(0.0, busy - cpu) / wall if wall > 0 else 0.0
        herd = Herd(kind, n, args.procs, times[0], times[-1], statistics.median(times), times, skew * 1000,
                    downloads, after["completed"] - before["completed"],
                    after["requests"] - before["requests"], quiet, other, ready_s, fetches, paths)
        if kind == "cachemgr" and downloads != 1:
            problems.append(f"cachemgr round {n}: the server saw {downloads} downloads (want 1)")
        return herd, problems
    finally:
        for c in children:
            c.close()
        if daemon is not None:
            daemon.stop()


def compare(herds: list[Herd]) -> list[str]:
    """The hub and cachemgr directories of the last round, file list and sizes."""
    hub = next((h for h in reversed(herds) if h.kind == "hub"), None)
    cm = next((h for h in reversed(herds) if h.kind == "cachemgr"), None)
    if hub is None or cm is None or not hub.paths or not cm.paths:
        return []
    return [f"tree: {p}" for p in harness.compare_trees(Path(os.path.realpath(cm.paths[0])), Path(hub.paths[0]))]


def summarize(herds: list[Herd]) -> dict[str, Any]:
    def med(kind: str, attr: str) -> float:
        return float(statistics.median(getattr(h, attr) for h in herds if h.kind == kind))

    s: dict[str, Any] = {}
    for kind in KINDS:
        s[kind] = {
            "first_s": med(kind, "first_s"),
            "last_s": med(kind, "last_s"),
            "median_child_s": med(kind, "median_s"),
            "last_s_per_round": [h.last_s for h in herds if h.kind == kind],
            "first_s_per_round": [h.first_s for h in herds if h.kind == kind],
            "downloads_per_round": [h.downloads for h in herds if h.kind == kind],
            "start_skew_ms_max": max(h.start_skew_ms for h in herds if h.kind == kind),
        }
    s["cachemgr"]["daemon_fetches_per_round"] = [h.daemon_fetches for h in herds if h.kind == "cachemgr"]
    ratio = s["cachemgr"]["last_s"] / s["hub"]["last_s"]
    s["ratio_last"] = ratio
    s["ratio_median_child"] = s["cachemgr"]["median_child_s"] / s["hub"]["median_child_s"]
    s["ratio_first"] = s["cachemgr"]["first_s"] / s["hub"]["first_s"]
    s["ratio_target"] = RATIO_TARGET
    s["ratio_ok"] = ratio <= RATIO_TARGET
    s["cachemgr_single_download"] = all(h.downloads == 1 for h in herds if h.kind == "cachemgr")
    s["other_load_cores_max"] = max(h.other_load for h in herds)
    s["herds_started_busy"] = sum(not h.quiet_start for h in herds)
    return s


def print_table(s: dict[str, Any], args: argparse.Namespace, archive_mib: float) -> None:
    hub, cm = s["hub"], s["cachemgr"]
    print(f"{args.procs} processes resolve one uncached {archive_mib:.0f} MiB .tar.gz at once "
          f"(medians of {args.rounds} rounds; seconds from go)")
    rows = [
        ("", "cachemgr", "tf_hub", "ratio"),
        ("first process has its path", f"{cm['first_s']:.2f}", f"{hub['first_s']:.2f}", f"{s['ratio_first']:.2f}"),
        ("median process", f"{cm['median_child_s']:.2f}", f"{hub['median_child_s']:.2f}",
         f"{s['ratio_median_child']:.2f}"),
        ("last process (all have it)", f"{cm['last_s']:.2f}", f"{hub['last_s']:.2f}", f"{s['ratio_last']:.2f}"),
        ("downloads seen by the server", ",".join(map(str, cm["downloads_per_round"])),
         ",".join(map(str, hub["downloads_per_round"])), ""),
        ("barrier release skew ms (max)", f"{cm['start_skew_ms_max']:.1f}", f"{hub['start_skew_ms_max']:.1f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for label, a, b, c in rows:
        print(f"{label:<{width}}  {a:>10}  {b:>10}  {c:>6}")
    ok = "OK" if s["ratio_ok"] else "MISSED"
    print(f"ratio last(cachemgr)/last(hub): {s['ratio_last']:.2f}  (target <= {RATIO_TARGET}: {ok})")
    print(f"per round, last process s: cachemgr {', '.join(f'{x:.2f}' for x in cm['last_s_per_round'])}; "
          f"hub {', '.join(f'{x:.2f}' for x in hub['last_s_per_round'])}")
    print(f"daemon fetches per round: {cm['daemon_fetches_per_round']}")
    if s["other_load_cores_max"] > 0.5 or s["herds_started_busy"]:
        print(f"WARNING: other processes kept up to {s['other_load_cores_max']:.1f} cores busy during timed herds; "
              f"{s['herds_started_busy']} herds started on a busy machine: the timings are noisy")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--procs", type=int, default=8, help="processes per herd")
    p.add_argument("--rounds", type=int, default=2, help="rounds (each runs both herds, order alternating)")
    p.add_argument("--size-mb", type=int, default=200, help="model size in MiB of float32 weights")
    p.add_argument("--rebuild", action="store_true", help="build the model archive again")
    harness.add_common_args(p, quiet_wait=30.0)
    args = p.parse_args(argv)
    if not 1 <= args.procs <= 64 or not 1 <= args.rounds <= 20 or args.size_mb < 1:
        p.error("--procs must be 1..64, --rounds 1..20, --size-mb >= 1")
    return args


def bench(args: argparse.Namespace) -> int:
    workdir, env = harness.bench_env(args.workdir)
    root, archive = harness.ensure_archive(workdir, args.size_mb, args.rebuild, env)
    archive_bytes = archive.stat().st_size  # in the page cache now: every herd downloads it from memory
    harness.log("warming imports (tensorflow_hub, cachemgr.shim), untimed")
    harness.run_child([sys.executable, "-c", "import tensorflow_hub, cachemgr.shim, cachemgr.client.daemon_client"],
                      env, timed=False)
    rundir = workdir / "herd"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir()
    try:
        server = CountingServer(root, env)
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    url = f"http://127.0.0.1:{server.port}/{harness.URL_PATH}"
    harness.log(f"serving {archive} ({archive_bytes / harness.MIB:.1f} MiB) at {url}")
    gate = harness.QuietGate(args.quiet_wait)
    herds: list[Herd] = []
    problems: list[str] = []
    try:
        for n in range(args.rounds):
            for kind in KINDS if n % 2 == 0 else KINDS[::-1]:
                herd, bad = run_herd(kind, n, args, url, env, rundir, server, gate)
                herds.append(herd)
                problems += bad
                harness.log(f"round {n} {kind:8} first {herd.first_s:5.2f}s last {herd.last_s:5.2f}s "
                            f"downloads {herd.downloads} (children ready in {herd.ready_s:.0f}s)"
                            f"  other load {herd.other_load:.1f} cores"
                            f"{'' if herd.quiet_start else '  (started busy)'}")
            problems += [f"round {n} {p}" for p in compare(herds[-2:])]
            for kind in KINDS:
                shutil.rmtree(rundir / f"{kind}-{n}", ignore_errors=True)
    except harness.ChildError as exc:
        harness.log(str(exc))
        return 2
    finally:
        server.stop()
    summary = summarize(herds)
    summary["trees_match"] = not any("tree:" in p for p in problems)
    summary["quiet_wait_s"] = gate.waited
    if args.json:
        doc = {
            "config": {"procs": args.procs, "rounds": args.rounds, "size_mb": args.size_mb, "url": url,
                       "archive_bytes": archive_bytes, "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "summary": summary,
            "problems": problems,
            "herds": [asdict(h) for h in herds],
        }
        print(json.dumps(doc, indent=2))
    else:
        print_table(summary, args, archive_bytes / harness.MIB)
        print("trees match (cachemgr vs hub): " + ("yes" if summary["trees_match"] else "NO"))
        for p in problems:
            print(f"  {p}")
    shutil.rmtree(rundir, ignore_errors=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return harness.dispatch_child(argv[1:], CHILDREN)
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
