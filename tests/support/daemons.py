"""Running real daemon subprocesses for tests (and the benchmarks), and talking to them.

``Daemon`` is one ``cachemgr daemon`` child; ``http`` speaks to its TCP listener; ``run_job`` runs
``tests/shim_job.py`` (unchanged TF Hub code through the shim) in a child; the rest wait on processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachemgr.client.daemon_client import call

from .env import BASE_ENV, REPO


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range: an outgoing connection of another
    process cannot take it between now and the daemon's bind (one from port 0 could)."""
    low, _high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free TCP port below the ephemeral range")


class Daemon:
    def __init__(self, home: Path, env: dict[str, str], *args: str, sock: Path | None = None,
                 listen: str | None = None, wrap: Sequence[str] = (), rundir: Path | None = None,
                 daemon_args: Sequence[str] = ()) -> None:
        """``wrap`` prefixes the command (``nsenter ... --``: run it on a node of the GlusterFS bed,
        which execs, so ``proc.pid`` is the daemon's); ``rundir`` holds the socket, ready file and
        log instead of ``home.parent`` (a node's local disk when ``home`` is on a volume this
        process has not mounted there). ``args`` go before ``daemon`` (global options),
        ``daemon_args`` after it (``--log-format json``)."""
        self.home = home
        run = rundir or home.parent
        self.sock = sock or run / f"d-{home.name}.sock"
        self.listen = listen
        self.ready = run / f"ready-{home.name}-{time.monotonic_ns()}"
        self.env = {**env, "CACHEMGR_HOME": str(home)}
        cmd = [*wrap, sys.executable, "-m", "cachemgr", *args, "daemon", *daemon_args, "--socket", str(self.sock),
               "--ready-file", str(self.ready)]
        if listen:
            cmd += ["--listen", listen]
        self.log = run / f"daemon-{home.name}-{time.monotonic_ns()}.log" if rundir else run / f"daemon-{home.name}.log"
        self._log_fh = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=self._log_fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30) -> Daemon:
        deadline = time.time() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            if time.time() > deadline:
                raise AssertionError(f"daemon not ready: {self.log.read_text()}")
            time.sleep(0.05)
        return self

    @property
    def base(self) -> str:
        assert self.listen
        return f"http://{self.listen}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        return call(str(self.sock), method, path, body, timeout=120)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()
        return int(self.proc.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.05) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (R, S, T stopped, Z zombie...), "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def stop_process(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it has really stopped (delivery is asynchronous)."""
    os.kill(pid, signal.SIGSTOP)
    assert wait_for(lambda: process_state(pid) == "T", 10), f"process {pid} did not stop"


def run_job(mode: str, *handles: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "shim_job.py"), mode, *handles],
                          env={**BASE_ENV, **env}, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), proc.stderr


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
