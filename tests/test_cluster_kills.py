"""Repeated kills on a shared store: a pull, a daemon's fetch, a prune or an import, on one node,
is SIGKILLed at a random moment while another runs on another node; then `cachemgr verify` from a
node that took no part finds nothing corrupt or partial. Seeded: the seed is printed (and in
every failure message); CACHEMGR_TEST_SEED=N replays one run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.cluster import SharedStore
from tests.support.daemons import Daemon
from tests.support.env import BASE_ENV
from tests.support.gluster import GlusterBed, Node
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives

ITERATIONS = 50
KINDS = ("pull", "daemon", "prune", "import")

pytestmark = pytest.mark.slow


class Run:
    """One participant: a CLI child, or a daemon's fetch (a resolve sent from a thread)."""

    def __init__(self, kind: str, proc: subprocess.Popen[str] | None = None, daemon: Daemon | None = None,
                 thread: threading.Thread | None = None) -> None:
        self.kind, self.proc, self.daemon, self.thread = kind, proc, daemon, thread

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.daemon is not None:
            self.daemon.stop(signal.SIGKILL)

    def finish(self, timeout: float, why: str) -> str:
        """Wait for it; its stderr. A hang or a traceback fails the test."""
        if self.thread is not None:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), f"{why}: a daemon fetch did not answer in {timeout:.0f}s"
            return ""
        assert self.proc is not None
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{why}: {self.kind} hung for {timeout:.0f}s") from None
        assert "Traceback" not in err, f"{why}: {self.kind} printed a traceback: {err[-3000:]}"
        return err


def test_random_kills_leave_a_store_that_verifies(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, origin: FakeOrigin, archives: Archives,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CACHEMGR_TEST_SEED", str(time.time_ns() % 2**32)))
    print(f"test_random_kills_leave_a_store_that_verifies: seed {seed} (CACHEMGR_TEST_SEED={seed} replays it)")
    rng = random.Random(seed)
    tag = f"kills{seed}"
    bodies = (archives.mymul, archives.text_v1, archives.text_v2)
    handles = [f"https://tfhub.dev/{tag}/m{i}/1" for i in range(6)]
    for i in range(6):
        origin.add_model(tag, f"m{i}", 1, bodies[i % 3])
    store = shared_store(lease_timeout=2.0)
    pull_node, daemon_node, prune_node, import_node, verifier = gluster_bed.nodes[:5]
    on: dict[str, Node] = {"pull": pull_node, "daemon": daemon_node, "prune": prune_node, "import": import_node}

    # The bundle to import: three of the models, exported from a store on local disk.
    local = Cli(tmp_path / "local", dict(BASE_ENV, CACHEMGR_MIRRORS=origin.mirrors,
                                         XDG_CONFIG_HOME=str(tmp_path / "xdg")))
    r = local("pull", *handles[3:])
    assert r.code == 0, r.err
    bundle = tmp_path / "three.tar.zst"
    r = local("export", *handles[3:], "-o", str(bundle))
    assert r.code == 0, r.err
    origin.reset_counters()
    daemon = store.daemon(daemon_node)

    def start(kind: str) -> Run:
        nonlocal daemon
        if kind == "daemon":
            if daemon.proc.poll() is not None:
                daemon = store.daemon(daemon_node)
            d, handle = daemon, rng.choice(handles)
            t = threading.Thread(target=_resolve, args=(d, handle), daemon=True)
            t.start()
            return Run(kind, daemon=d, thread=t)
        args = {"pull": ("pull", *rng.sample(handles, 2)),
                "prune": ("prune", "--max-size", "0", "--grace", "0s"),
                "import": ("import", str(bundle))}[kind]
        return Run(kind, proc=store.cli_popen(on[kind], *args))

    for i in range(ITERATIONS):
        victim_kind = rng.choice(KINDS)
        other_kind = rng.choice([k for k in KINDS if k != victim_kind])
        delay = rng.uniform(0.2, 2.0)
        why = f"seed {seed}, iteration {i}: kill {victim_kind} after {delay:.2f}s while {other_kind} runs"
        victim, other = start(victim_kind), start(other_kind)
        time.sleep(delay)
        victim.kill()
        victim.finish(30, why)  # a killed daemon's resolve sees the connection drop
        said = other.finish(180, why)
        v = store.cli(verifier, "verify")
        assert v.code == 0, (f"{why}: verify from {verifier.name} exited {v.code}: {v.out}{v.err}"
                             f"(the {other_kind} that ran alongside said: {said[-2000:]!r})")
        dangling = [p.name for p in _view(store) if p.is_symlink() and not p.exists()]
        assert dangling == [], f"{why}: view entries point at nothing: {dangling}"
    assert origin.completed("gcs") >= 1, "no download ever completed: the loop tested nothing"


def _resolve(d: Daemon, handle: str) -> Any:
    try:
        return d.call("POST", "/v1/resolve", {"handle": handle})
    except Exception as exc:  # noqa: BLE001  (the daemon may be the one killed)
        return exc


def _view(store: SharedStore) -> list[Path]:
    view = store.host(store.view)
    return sorted(view.iterdir()) if view.exists() else []
