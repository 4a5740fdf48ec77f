"""Helpers shared by every benchmark that runs children (stdlib only: the children import it).

``bench_pull.py`` imports it directly, ``bench_herd.py``, ``bench_resolve_latency.py`` (with
``latency_load.py``) and ``bench_shim_hit.py`` through ``bench_common.py``, all as ``bp``:

- measuring a process: ``proc_status_kib`` / ``reset_peak_rss`` (RSS and its peak),
  ``cpu_seconds``, ``host_busy_seconds`` (the whole machine, from ``/proc/stat``);
- children: ``bench_env`` (their environment), ``run_child`` (wall, CPU and peak RSS of one,
  plus the other load meanwhile), ``ChildError``, ``emit`` (their one JSON line), ``log``,
  ``cachemgr_cmd``, ``child_cmd``;
- the command line: ``add_common_args`` (``--json``, ``--workdir``, ``--quiet-wait``) and the
  idle-machine gate ``QuietGate``;
- the big model: ``ensure_archive`` builds (once, cached under ``--workdir``) a real SavedModel
  and its TF Hub ``.tar.gz``, ``Server`` serves it from a separate process on 127.0.0.1;
  ``tree_listing`` / ``compare_trees`` check what a pull unpacked.

This module is also the child that builds and serves that archive:

    python benchmarks/bench_base.py --child build DEST SIZE_BYTES
    python benchmarks/bench_base.py --child serve ROOT      # prints the port, then serves
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
URL_PATH = "bench/big/1"
QUIET_CORES = 0.2


# ---------------------------------------------------------------------------------------
# Helpers shared by the parents and the children
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
# Children of this module: the big archive
# ---------------------------------------------------------------------------------------
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


CHILDREN = {"build": child_build, "serve": child_serve}


# ---------------------------------------------------------------------------------------
# Parents
# ---------------------------------------------------------------------------------------
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


def child_cmd(script: str, kind: str, *args: str) -> list[str]:
    """``python SCRIPT --child KIND ARGS...``: the command line of a child of benchmark ``script``."""
    return [sys.executable, str(Path(script).resolve()), "--child", kind, *args]


def self_cmd(kind: str, *args: str) -> list[str]:
    """A child of this module (``build`` or ``serve``), as ``ensure_archive`` and ``Server`` start them."""
    return child_cmd(__file__, kind, *args)


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


def dispatch_child(argv: list[str], children: dict[str, Any]) -> int:
    """Run the child ``argv`` names (``KIND ARGS...``, what follows ``--child``) from ``children``."""
    kind, *rest = argv
    fn: Any = children[kind]
    if kind == "build":
        fn(rest[0], int(rest[1]))
    else:
        fn(*rest)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--child"]:
        raise SystemExit(f"usage: bench_base.py --child {{{','.join(CHILDREN)}}} ARGS...")
    return dispatch_child(argv[1:], CHILDREN)


if __name__ == "__main__":
    sys.exit(main())
