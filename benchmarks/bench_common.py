"""Helpers shared by bench_herd.py, bench_resolve_latency.py (with its latency_load.py and
latency_report.py) and bench_shim_hit.py.

Stdlib only at import time (children of the benchmarks import this module). The generic
pieces (child environment, idle-machine gate, archive building, tree comparison) come from
bench_base.py (re-exported here as ``bp``); what is here is only what those three need on top:
running the daemon, a tiny model for hit paths, percentiles, and reading several children's
stdout at once.
"""

from __future__ import annotations

import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

try:
    from benchmarks import bench_base as bp
except ImportError:  # run as a script: benchmarks/ itself is first on sys.path
    import bench_base as bp  # type: ignore[no-redef]

__all__ = ["bp", "Daemon", "ChildPipe", "child_pids", "ensure_small_models", "percentiles", "proc_cpu_seconds", "pump",
           "reap", "tree_cpu_seconds"]

REPO_ROOT = bp.REPO_ROOT


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of process ``pid`` so far (all its threads), from /proc.

    With ``reaped_children``, also cutime + cstime: the CPU of its children that exited and
    that it waited for (a crashed worker's CPU stays counted this way).
    """
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (of all its threads), from ``/proc/PID/task/*/children``."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                out += [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(out))


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds per process of ``pid``'s process tree: ``pid`` itself (with its reaped children)
    and every live descendant (with theirs). Sum the values for the tree's total."""
    out: dict[int, float] = {}
    todo = [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        if p in out:
            continue
        out[p] = proc_cpu_seconds(p, reaped_children=True)
        todo += child_pids(p)
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean/min of ``values`` (same unit as the input)."""
    if not values:
        return {"n": 0}
    if len(values) == 1:
        v = values[0]
        return {"n": 1, "min": v, "p50": v, "p95": v, "p99": v, "max": v, "mean": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "min": min(values), "p50": q[49], "p95": q[94], "p99": q[98],
            "max": max(values), "mean": statistics.fmean(values)}


def reap(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Wait for ``proc`` (killing it after ``timeout``); returns its user + system CPU seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            deadline = time.monotonic() + 10
        time.sleep(0.02)


class Daemon:
    """``cachemgr --home HOME daemon --socket SOCKET [--workers N]`` as a separate process.

    ``name`` tells several daemons on one store apart: each gets its own socket
    (``HOME/NAME.sock``, default ``HOME/d.sock``), ready file and log. ``workers`` is passed as
    ``--workers`` (None: the daemon's default). The daemon's CPU (``cpu_seconds``) includes its
    worker processes, which are its children.
    """

    def __init__(self, home: Path, env: dict[str, str], start_timeout: float = 60.0, workers: str | None = None,
                 name: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.workers = workers
        self.socket = home / f"{name or 'd'}.sock"
        ready = home / f"{name or 'daemon'}.ready"
        ready.unlink(missing_ok=True)
        self.log_path = home.parent / (f"{home.name}-{name}.daemon.log" if name else f"{home.name}.daemon.log")
        self._log: IO[bytes] = self.log_path.open("wb")
        cmd = [*bp.cachemgr_cmd(), "--home", str(home), "daemon", "--socket", str(self.socket),
               "--ready-file", str(ready)]
        if workers is not None:
            cmd += ["--workers", workers]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     env={**env, "CACHEMGR_HOME": str(home)}, cwd=REPO_ROOT)
        deadline = time.monotonic() + start_timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise bp.ChildError(f"daemon did not start; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)
        status, doc = self.call("GET", "/v1/health")
        if status != 200:
            self.stop()
            raise bp.ChildError(f"daemon health check said {status} {doc}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
        from cachemgr.client.daemon_client import call

        return call(str(self.socket), method, path, body, timeout=timeout)

    def children(self) -> list[int]:
        """The daemon's live child processes (its workers), from /proc."""
        return child_pids(self.proc.pid)

    def cpu_split(self) -> tuple[float, float]:
        """CPU seconds so far of the daemon process itself (plus children it reaped, e.g. a worker
        that crashed) and of its live descendants (the workers)."""
        per = tree_cpu_seconds(self.proc.pid)
        own = per.pop(self.proc.pid, 0.0)
        return own, sum(per.values())

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the daemon and its workers (every process of its tree)."""
        return sum(self.cpu_split())

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def ensure_small_models(workdir: Path, inits: list[float], env: dict[str, str]) -> list[tuple[Path, Path]]:
    """Tiny ``MyMulModel`` SavedModels (y = init * x) and their TF Hub ``.tar.gz``, built once.

    Returns ``(saved_model_dir, archive)`` per init value; cached under ``WORKDIR/small``.
    """
    root = workdir / "small"
    out = [(root / f"mymul-{init:g}", root / f"mymul-{init:g}.tar.gz") for init in inits]
    missing = [(init, d, a) for init, (d, a) in zip(inits, out, strict=True) if not a.is_file()]
    if missing:
        bp.log(f"building {len(missing)} tiny SavedModel(s) (once; cached under {root})")
        code = (
            "import shutil, sys\n"
            "from pathlib import Path\n"
            f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
            "from tests.support.models import build_mymul, make_archive\n"
            "args = sys.argv[1:]\n"
            "for init, d, a in zip(args[0::3], args[1::3], args[2::3]):\n"
            "    shutil.rmtree(d, ignore_errors=True)\n"
            "    build_mymul(Path(d), float(init))\n"
            "    make_archive(Path(d), Path(a + '.part'), 'gz')\n"
            "    Path(a + '.part').rename(a)\n"
        )
        args = [str(x) for init, d, a in missing for x in (init, d, a)]
        root.mkdir(parents=True, exist_ok=True)
        bp.run_child([sys.executable, "-c", code, *args], env, timed=False)
    return out


class ChildPipe:
    """A child whose stdout is read line by line without blocking (several at once, with deadlines)."""

    def __init__(self, cmd: list[str], env: dict[str, str], stderr_path: Path, stdin: bool = False) -> None:
        self.stderr_path = stderr_path
        self._err = stderr_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._err, env=env, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""
        self.lines: list[str] = []
        self.eof = False

    def feed(self) -> None:
        assert self.proc.stdout is not None
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            data = b"\n" if self.buf else b""
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [line.decode("utf-8", "replace") for line in done if line.strip()]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def last_json(self) -> dict[str, Any] | None:
        import json

        for line in reversed(self.lines):
            if line.startswith("{"):
                doc: dict[str, Any] = json.loads(line)
                return doc
        return None

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._err.close()


def pump(children: list[ChildPipe], until: Any, timeout: float) -> bool:
    """Read all children's stdout until ``until(child)`` holds for every one; False on timeout."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    try:
        for c in children:
            if not c.eof and c.proc.stdout is not None:
                sel.register(c.proc.stdout.fileno(), selectors.EVENT_READ, c)
        while not all(until(c) for c in children):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in sel.select(timeout=min(left, 1.0)):
                child: ChildPipe = key.data
                child.feed()
                if child.eof:
                    sel.unregister(key.fd)
            if any(c.eof and not until(c) for c in children):
                return all(until(c) for c in children)
        return True
    finally:
        sel.close()
