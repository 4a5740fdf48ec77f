"""One fetch across many nodes of a store on GlusterFS: daemons per node, shim and plain hub clients.

Each node is its own mount namespace with its own FUSE mount (tests/support/gluster.py); the
clients run offline (``unshare -n`` inside the node), so a client that tried to download by
itself would fail: the origin's counters show what the nodes fetched.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.cluster import SharedStore, files_named, hub_result, sockets_of
from tests.support.daemons import Daemon, wait_for
from tests.support.gluster import GlusterBed
from tests.support.origin import FakeOrigin

MYMUL = "https://tfhub.dev/google/mymul/1"
HUB_LOCK = hashlib.sha1(MYMUL.encode()).hexdigest() + ".lock"

pytestmark = pytest.mark.slow


def resolve_in_thread(d: Daemon, handle: str) -> tuple[threading.Thread, list[Any]]:
    """POST /v1/resolve to ``d`` from a thread; the answer (or the exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(d.call("POST", "/v1/resolve", {"handle": handle}))
        except Exception as exc:  # noqa: BLE001  (a killed daemon drops the connection)
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def leases(store: SharedStore) -> list[dict[str, Any]]:
    out = []
    for p in files_named(store.host_home / "leases", ".lease"):
        try:
            out.append(json.loads(p.read_bytes()))
        except (OSError, ValueError):
            continue
    return out


def test_one_model_asked_from_four_nodes_is_downloaded_once(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, origin: FakeOrigin,
) -> None:
    store = shared_store()
    nodes = gluster_bed.nodes[:4]
    daemons = [store.daemon(n) for n in nodes]
    idle = [sockets_of(d.proc.pid) for d in daemons]
    # Every body waits until every node has asked: a node that fetched by itself would show as a
    # second body started (and no node's client can be done, and gone, before the others ask).
    release = origin.hold("gcs", after_bytes=0, times=None)

    def all_asked() -> bool:
        busy = [sockets_of(d.proc.pid) > i for d, i in zip(daemons, idle, strict=True)]
        return origin.started("gcs") >= 1 and all(busy)

    jobs = [store.hub_popen(n, "load", MYMUL, offline=True) for n in nodes]
    assert wait_for(all_asked, 300, 0.2), (f"not every node's shim asked its daemon: idle sockets {idle}, now "
                                           f"{[sockets_of(d.proc.pid) for d in daemons]}, {origin.requests}")
    release.set()
    results = [hub_result(j) for j in jobs]
    for n, out in zip(nodes, results, strict=True):
        assert out["call"] == [6.0], (n.name, out)
        assert out["path"].startswith(str(store.view)), (n.name, out)
    assert origin.started("gcs") == 1 and origin.completed("gcs") == 1, origin.requests
    assert files_named(store.host(store.view), ".lock") == []
    v = store.cli(gluster_bed.nodes[4], "verify")
    assert v.code == 0, v.out + v.err


def test_plain_hub_on_another_node_waits_for_the_fetch_and_does_not_download(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, origin: FakeOrigin,
) -> None:
    store = shared_store()
    a, b = gluster_bed.nodes[:2]
    d = store.daemon(a)
    size = len(origin.archive("google", "mymul", 1))
    release = origin.hold("gcs", after_bytes=size // 2)
    t, answer = resolve_in_thread(d, MYMUL)
    lock = store.host(store.view / HUB_LOCK)
    assert wait_for(lock.exists, 60), f"no {HUB_LOCK} in the view while node1 fetches: {d.output()[-2000:]}"
    host, pid, uid = lock.read_text().rsplit(".", 2)
    assert host and pid.isdigit() and len(uid) == 32, lock.read_text()  # hub's host.pid.uuid

    # Plain tensorflow_hub, no shim, no network, its cache = the view: it must wait for the lock.
    job = store.hub_popen(b, "plain", MYMUL, offline=True)
    assert not wait_for(lambda: job.poll() is not None, 20, 0.5), f"plain hub did not wait: {job.communicate()}"
    assert lock.exists() and origin.completed("gcs") == 0
    release.set()
    out = hub_result(job)
    t.join(120)
    assert answer and not isinstance(answer[0], Exception) and answer[0][0] == 200, answer
    assert out["call"] == [6.0] and out["path"] == str(store.view / HUB_LOCK.removesuffix(".lock")), out
    assert origin.started("gcs") == 1 and origin.completed("gcs") == 1, origin.requests
    assert files_named(store.host(store.view), ".lock") == []


def test_a_killed_lease_holder_is_taken_over_once_its_lease_is_stale(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, origin: FakeOrigin,
) -> None:
    store = shared_store(lease_timeout=3.0)
    a, b, c = gluster_bed.nodes[:3]
    da, db = store.daemon(a), store.daemon(b)
    size = len(origin.archive("google", "mymul", 1))
    origin.hold("gcs", after_bytes=size // 2)  # node1's download stops halfway; the next one is whole
    _, first = resolve_in_thread(da, MYMUL)
    assert wait_for(lambda: origin.started("gcs") == 1 and any(x["node"] == a.name for x in leases(store)), 60), \
        (f"node1 holds no fetch lease mid-download: {leases(store)} {origin.requests}", da.output()[-2000:])
    idle = sockets_of(db.proc.pid)
    tb, second = resolve_in_thread(db, MYMUL)
    assert wait_for(lambda: sockets_of(db.proc.pid) > idle, 30), "node2's daemon never got the resolve"
    da.stop(signal.SIGKILL)
    tb.join(120)
    assert second and not isinstance(second[0], Exception), second
    status, body = second[0]
    assert status == 200, (body, db.output()[-3000:])
    assert origin.started("gcs") == 2 and origin.completed("gcs") == 1, origin.requests
    assert first and isinstance(first[0], Exception), first  # node1 died before answering
    # No partial entry: node3 loads the model offline, verify passes, no lease or hub lock is left.
    out = store.hub(c, "plain", MYMUL, offline=True)
    assert out["call"] == [6.0], out
    v = store.cli(c, "verify")
    assert v.code == 0, v.out + v.err
    ls = store.cli(c, "ls", "--json")
    assert ls.code == 0 and [m["handle"] for m in json.loads(ls.out)["models"]] == [MYMUL], ls.out + ls.err
    assert files_named(store.host(store.view), ".lock") == []
    assert [x for x in leases(store) if x["node"] == a.name] == [], leases(store)
