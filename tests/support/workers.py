"""Driving a daemon with workers in tests: start one, stop its primary, find its processes and counters.

A request that reaches the daemon while the primary is SIGSTOPped can only have been accepted
by a worker (a stopped process accepts nothing): ``primary_stopped`` and ``call_stopped`` are
how the worker tests know which process served what, without any timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cachemgrd.counters import SharedCounters
from cachemgrd.supervisor import SLOTS

from cachemgr.client.daemon_client import call
from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, process_state, stop_process


def workers_of(d: Daemon) -> list[int]:
    """The daemon's child processes, read from /proc while it runs (a dead one's pid may be reused)."""
    if d.proc.poll() is not None:
        return []
    try:
        with open(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def run_dir(home: Path) -> Path:
    """The TMPDIR a test daemon gets, where its private directory (socket, counters) goes: short, so
    that a long pytest path cannot make the socket path too long, and derived from ``home``."""
    return Path("/tmp") / f"cm-{hashlib.sha1(str(home).encode()).hexdigest()[:12]}"


def start(daemons: list[Daemon], cli: Cli, home: Path, workers: int, *args: str, env: dict[str, str] | None = None,
          listen: bool = False) -> Daemon:
    extra = {"CACHEMGR_WORKERS": str(workers), "TMPDIR": str(run_dir(home)), **(env or {})}
    Path(extra["TMPDIR"]).mkdir(exist_ok=True)
    d = Daemon(home, {**cli.env, **extra}, *args, listen=f"127.0.0.1:{free_port()}" if listen else None)
    daemons.append(d)
    d.wait_ready()
    return d


def status(d: Daemon) -> dict[str, Any]:
    code, doc = d.call("GET", "/v1/status")
    assert code == 200, doc
    return doc


@contextlib.contextmanager
def primary_stopped(d: Daemon) -> Iterator[None]:
    stop_process(d.proc.pid)
    try:
        yield
    except TimeoutError:  # nobody answered: say which processes there were and what the daemon logged
        states = {pid: process_state(pid) for pid in [d.proc.pid, *workers_of(d)]}
        raise AssertionError(f"no answer with the primary stopped; processes {states}; log:\n{d.output()}") from None
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)


def call_stopped(d: Daemon, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """A request while the primary is stopped: a worker must answer it, so 30 s is plenty."""
    return call(str(d.sock), method, path, body, timeout=30)


def alive(pid: int) -> bool:
    return process_state(pid) not in ("", "Z")


class Background:
    """Requests sent from threads, so that they can wait on a stopped primary."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.threads: list[threading.Thread] = []

    def run(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=lambda: self.results.append(fn(*args)), daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout: float = 120) -> list[Any]:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a request never finished"
        return self.results


def forwarded_so_far(d: Daemon) -> int:
    """The workers' forwarded counter, read from the shared counters file (the primary may be stopped)."""
    (path,) = run_dir(d.home).glob("cachemgrd-*/counters")
    counters = SharedCounters(path, SLOTS)
    try:
        return counters.totals()["forwarded"]
    finally:
        counters.close()


def sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                out.add(int(link[8:-1]))
    return out


def listening_inode(path: Path) -> int:
    """The inode of the listening Unix socket bound at ``path`` (flag __SO_ACCEPTCON in /proc/net/unix)."""
    with open("/proc/net/unix") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if len(fields) == 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
                return int(fields[6])
    raise AssertionError(f"no listening socket at {path}")
