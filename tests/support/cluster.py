"""One shared store on the GlusterFS bed, used from its nodes: CLI runs, daemons, hub processes.

``SharedStore`` is a fresh store directory on the volume for one test: ``home`` (and its
``view``) is the same absolute path on every node; ``cli(node, ...)`` runs the real ``cachemgr``
there, ``daemon(node)`` starts a real daemon on that node, ``hub(node, ...)`` runs
``tests/shim_job.py`` (unchanged tensorflow_hub code) there, and ``host(path)`` is where this
process sees a store path through its own mount. Every node has its own ``CACHEMGR_NODE_ID``
(``node1``...), its own socket, and the lease and node timeouts the test asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .cli import Result
from .daemons import Daemon
from .env import BASE_ENV, REPO
from .gluster import GlusterBed, Node


class SharedStore:
    def __init__(self, bed: GlusterBed, name: str, mirrors: str, *, lease_timeout: float = 3.0,
                 node_timeout: float = 3600.0, extra_env: dict[str, str] | None = None) -> None:
        self.bed = bed
        self.home = bed.mount / name / "store"
        self.view = self.home / "view"
        self.host_home = bed.on_host(self.home)
        self.host_home.parent.mkdir(parents=True, exist_ok=True)
        self.env = dict(BASE_ENV, CACHEMGR_MIRRORS=mirrors, CACHEMGR_RETRIES="3", CACHEMGR_BACKOFF="0.05",
                        # the tests hold origin bodies for as long as they need: no stall timer
                        CACHEMGR_LOW_SPEED_LIMIT="0",
                        CACHEMGR_LEASE_TIMEOUT=f"{lease_timeout}s", CACHEMGR_NODE_TIMEOUT=f"{node_timeout}s",
                        CACHEMGR_HOME=str(self.home), **(extra_env or {}))
        self.name = name
        self.daemons: list[Daemon] = []

    def host(self, path: Path) -> Path:
        """``path`` (under ``home``, as nodes see it) through this process's own mount."""
        return self.bed.on_host(path)

    def socket(self, node: Node) -> Path:
        return node.local / f"{self.name}.sock"

    def node_env(self, node: Node, **extra: str) -> dict[str, str]:
        return {**self.env, "CACHEMGR_NODE_ID": node.name, "CACHEMGR_SOCKET": str(self.socket(node)),
                "XDG_CONFIG_HOME": str(node.local / "xdg-config"), "TMPDIR": str(node.local), **extra}

    def cli(self, node: Node, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        proc = subprocess.run(node.argv(sys.executable, "-m", "cachemgr", *args),
                              env=self.node_env(node, **(env or {})), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def cli_popen(self, node: Node, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(node.argv(sys.executable, "-m", "cachemgr", *args),
                                env=self.node_env(node, **(env or {})), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)

    def daemon(self, node: Node, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> Daemon:
        """A real daemon on ``node`` (one worker: the tests count one process per node)."""
        d = Daemon(self.home, {**self.node_env(node, CACHEMGR_WORKERS="1"), **(env or {})}, *args,
                   sock=self.socket(node), wrap=node.argv(), rundir=node.local)
        self.daemons.append(d)
        return d.wait_ready(60) if ready else d

    def hub_argv(self, node: Node, mode: str, *handles: str, offline: bool = False) -> list[str]:
        return node.argv(sys.executable, str(REPO / "tests" / "shim_job.py"), mode, *handles, offline=offline)

    def hub_env(self, node: Node, **extra: str) -> dict[str, str]:
        return {**self.node_env(node), "TFHUB_CACHE_DIR": str(self.view), **extra}

    def hub_popen(self, node: Node, mode: str, *handles: str, offline: bool = False,
                  env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``tests/shim_job.py MODE HANDLE...`` on ``node`` (``plain``: no shim), with the view as hub's cache."""
        return subprocess.Popen(self.hub_argv(node, mode, *handles, offline=offline),
                                env={**self.hub_env(node), **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)

    def hub(self, node: Node, mode: str, *handles: str, offline: bool = False,
            env: dict[str, str] | None = None, timeout: float = 300) -> dict[str, Any]:
        proc = self.hub_popen(node, mode, *handles, offline=offline, env=env)
        return hub_result(proc, timeout)

    def stop_daemons(self) -> None:
        for d in self.daemons:
            d.stop()


def hub_result(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    """The ``RESULT`` line of a finished ``shim_job.py`` child (an AssertionError with its stderr otherwise)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"hub job exited {proc.returncode}: {err[-3000:]}"
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, f"hub job printed no RESULT: {out[-1000:]} {err[-2000:]}"
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def sockets_of(pid: int) -> int:
    """How many sockets process ``pid`` has open (a daemon's listeners plus its connections).

    Counted from /proc, not with ``ss``: the server side of a connection from a client in
    another network namespace (``unshare -n``) lives in the client's namespace."""
    n = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return n


def files_named(root: Path, suffix: str) -> list[Path]:
    """Files under ``root`` whose names end with ``suffix`` (hub locks, leases, temps)."""
    return sorted(p for p in root.rglob(f"*{suffix}")) if root.exists() else []
