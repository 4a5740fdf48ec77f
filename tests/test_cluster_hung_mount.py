"""A node daemon whose GlusterFS mount hangs for real: it answers health, says degraded, and stops.

The node's FUSE client is stopped (SIGSTOP, tests/support/hung_mount.py) while the daemon
downloads a model into the shared store: every call on that node's mount now waits in the
kernel. The daemon must go on answering ``/v1/health`` (``degraded``, naming stuck calls), and
SIGTERM must end it (with status 0: it stopped as asked) although store threads of it are
stuck in the kernel, instead of hanging in its shutdown until the mount answers. Then the
client resumes, and another node verifies the store and pulls the model. A daemon started on
the hung mount (its start-up waiting on the store) stops on SIGTERM too.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cachemgr.client.daemon_client import call
from tests.support.cluster import SharedStore
from tests.support.daemons import Daemon, process_state, wait_for
from tests.support.gluster import GlusterBed
from tests.support.hung_mount import fuse_waits, hung
from tests.support.origin import FakeOrigin

MYMUL = "https://tfhub.dev/google/mymul/1"
STOP_BOUND = 60.0  # generous: the daemon gives up on its stuck calls after 8 s (main.STOP_DEADLINE)

pytestmark = pytest.mark.slow


def test_a_daemon_on_a_hung_mount_reports_it_and_stops_on_sigterm(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, origin: FakeOrigin,
) -> None:
    store = shared_store()
    node, other = gluster_bed.nodes[0], gluster_bed.nodes[1]
    d = store.daemon(node, env={"CACHEMGR_STUCK_IO_AFTER": "1s"})
    sock = str(d.sock)
    release = origin.hold("gcs", after_bytes=0, times=None)
    answer: list[Any] = []

    def ask() -> None:
        try:
            answer.append(call(sock, "POST", "/v1/resolve", {"handle": MYMUL}, timeout=600))
        except Exception as exc:  # noqa: BLE001  (the stopped daemon drops the connection)
            answer.append(exc)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    try:
        assert wait_for(lambda: origin.started("gcs") >= 1, 120, 0.1), f"the daemon did not fetch: {d.output()}"
        with hung(node) as client:
            release.set()  # the body comes in; its blobs go to the hung mount
            stuck: list[dict[str, Any]] = []

            def degraded() -> bool:
                code, doc = call(sock, "GET", "/v1/health", timeout=30)  # answered: the loop is free
                assert code == 200, doc
                stuck[:] = doc.get("stuck_io", [])
                return bool(doc["status"] == "degraded" and stuck)

            assert wait_for(degraded, 120, 0.2), "health never said degraded while the mount hung"
            shown = store.cli(node, "status", env={"CACHEMGR_HOME": str(node.local / "none")}, timeout=60)
            assert shown.code == 0 and "STUCK store" in shown.out, shown
            assert process_state(client) == "T" and not answer, answer
            code, took = _terminate(d, "while its mount hung")
        print(f"\nstuck calls when stopped: {[c['what'] for c in stuck]}; the daemon exited {code} "
              f"{took:.1f}s after SIGTERM")  # a figure, not asserted
        assert code == 0, d.output()[-3000:]
        assert "exiting without the store calls still running" in d.output(), d.output()[-3000:]
    finally:
        release.set()
    asker.join(60)
    v = store.cli(other, "verify", timeout=300)
    assert v.code == 0, f"verify from {other.name} after the hang: {v.out}{v.err}"
    pulled = store.cli(other, "pull", MYMUL, timeout=300)
    assert pulled.code == 0, pulled.err
    assert store.cli(other, "verify", timeout=300).code == 0


def test_a_daemon_starting_on_a_hung_mount_stops_on_sigterm(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, origin: FakeOrigin,
) -> None:
    """Its start-up (opening the store, undoing dead runs) is a store job: SIGTERM meanwhile ends it."""
    store = shared_store()
    node, other = gluster_bed.nodes[2], gluster_bed.nodes[3]
    assert store.cli(other, "pull", MYMUL, timeout=300).code == 0
    with hung(node):
        d = store.daemon(node, ready=False)
        assert wait_for(lambda: fuse_waits(d.proc.pid) > 0, 120, 0.1), \
            f"the daemon never waited on its hung mount: {d.output()}"
        assert not d.ready.exists()  # not ready: the store did not answer
        code, took = _terminate(d, "while starting on a hung mount")
        print(f"\nstarting on a hung mount, the daemon exited {code} {took:.1f}s after SIGTERM")
        assert code == 0 and "stopped during start-up" in d.output(), (code, d.output()[-3000:])
    v = store.cli(other, "verify", timeout=300)
    assert v.code == 0, f"verify from {other.name} after the hang: {v.out}{v.err}"


def _terminate(d: Daemon, when: str) -> tuple[int, float]:
    """SIGTERM the daemon; its exit status and the seconds it took (a figure, not asserted).
    Not exiting within STOP_BOUND fails the test."""
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        code = d.proc.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the daemon did not exit {STOP_BOUND:.0f}s after SIGTERM {when} "
                             f"(state {process_state(d.proc.pid)}): {d.output()[-3000:]}") from None
    return code, time.monotonic() - sent
