"""Running the benchmarks' children (stdlib only: the children import the harness too).

- the parent's side: ``bench_env`` (the children's environment), ``run_child`` (wall, CPU and
  peak RSS of one, plus the other load meanwhile), ``ChildPipe`` / ``pump`` (several children's
  stdout at once), ``wait_ready`` / ``wait_results`` (the ready / go / result protocol),
  ``reap``, ``ChildError``, ``log``, ``child_cmd``, ``cachemgr_cmd`` / ``cachemgr_add``,
  ``add_common_args`` (``--json``, ``--workdir``, ``--quiet-wait``);
- the child's side: ``await_go`` (say ready, block until the parent writes ``go``), ``emit``
  (the one JSON line a child reports), ``dispatch_child`` (``SCRIPT --child KIND ARGS...``).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .measure import host_busy_seconds

if TYPE_CHECKING:
    from .models import Server

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class ChildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def emit(doc: dict[str, Any]) -> None:
    """Children report one JSON line on stdout, after anything else they printed."""
    sys.stdout.write("\n" + json.dumps(doc) + "\n")
    sys.stdout.flush()


def await_go() -> None:
    """In a child: print ``ready``, then block until the parent writes ``go`` on stdin."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")


def dispatch_child(argv: list[str], children: Mapping[str, Callable[..., object]]) -> int:
    """Run the child ``argv`` names (``KIND ARGS...``, what follows ``--child``) from ``children``."""
    kind, *rest = argv
    if kind not in children:
        raise SystemExit(f"unknown child {kind}")
    children[kind](*rest)
    return 0


def child_cmd(script: str, kind: str, *args: str) -> list[str]:
    """``python SCRIPT --child KIND ARGS...``: the command line of a child of benchmark ``script``."""
    return [sys.executable, str(Path(script).resolve()), "--child", kind, *args]


def cachemgr_cmd() -> list[str]:
    exe = shutil.which("cachemgr")
    return [exe] if exe else [sys.executable, "-m", "cachemgr"]


@dataclass
class ChildResult:
    wall_s: float
    peak_rss_mib: float
    cpu_s: float
    other_load: float
    stdout: str
    report: dict[str, Any] = field(default_factory=dict)


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


def cachemgr_add(home: Path, handle: str, archive: Path, env: dict[str, str]) -> None:
    """``cachemgr --home HOME add HANDLE ARCHIVE`` (untimed)."""
    run_child([*cachemgr_cmd(), "--home", str(home), "add", handle, str(archive)], env, timed=False)


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


def add_common_args(p: argparse.ArgumentParser, quiet_wait: float) -> None:
    """--json, --workdir and --quiet-wait, which every benchmark that runs children takes."""
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHEMGR_", "TFHUB_"))}
    env.update(
        CACHEMGR_CONFIG=str(empty_config),  # no user/system config (mirrors...) in the way
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra or {})
    return workdir, env


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


def pump(children: list[ChildPipe], until: Callable[[ChildPipe], bool], timeout: float) -> bool:
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


def _pump_or_fail(children: list[ChildPipe], until: Callable[[ChildPipe], bool], timeout: float,
                  failed: str) -> None:
    if not pump(children, until, timeout):
        bad = next((c for c in children if not until(c)), children[0])
        raise ChildError(f"{failed} (exit {bad.proc.poll()}):\n{bad.stderr_tail()}")


def wait_ready(children: list[ChildPipe], kind: str, timeout: float) -> None:
    """Until every child printed ``ready`` (see ``await_go``); ChildError naming the first that did not."""
    _pump_or_fail(children, lambda c: "ready" in c.lines, timeout, f"{kind} child not ready")


def wait_results(children: list[ChildPipe], kind: str, timeout: float) -> list[dict[str, Any]]:
    """Every child's JSON report (see ``emit``), in order; ChildError naming the first that gave none."""
    _pump_or_fail(children, lambda c: c.last_json() is not None, timeout, f"{kind} child gave no result")
    return [c.last_json() or {} for c in children]
