"""Prune on one node of a shared store respects what the other nodes use, while they are alive.

The timeline: both models are written more than the grace ago; node2's daemon serves mymul (a
use by node2, within the grace) and node1 prunes everything it may: mymul stays, the other
model goes. Then node2 stops and stays silent past node_timeout while its use is still within
the grace: node1's next prune removes mymul."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.support.cluster import SharedStore
from tests.support.gluster import GlusterBed, Node

MYMUL = "https://tfhub.dev/google/mymul/1"
TEXT = "https://tfhub.dev/google/text-embed/1"
GRACE = 60.0        # prune's grace: longer than the whole second half of the test, even on a busy host
NODE_TIMEOUT = 4.0  # a node silent for longer holds nothing back

pytestmark = pytest.mark.slow


def stored(store: SharedStore, node: Node) -> set[str]:
    """The handles in the store, by `ls` (which, unlike `path`, records no use)."""
    r = store.cli(node, "ls", "--json")
    assert r.code == 0, r.err
    return {m["handle"] for m in json.loads(r.out)["models"]}


def test_prune_keeps_a_model_a_live_node_uses_and_forgets_a_silent_node(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed,
) -> None:
    store = shared_store(node_timeout=NODE_TIMEOUT)
    a, b, c = gluster_bed.nodes[:3]
    r = store.cli(c, "pull", MYMUL, TEXT)
    assert r.code == 0, r.err
    written = time.time()
    db = store.daemon(b)  # node2 is alive: its daemon heartbeats
    time.sleep(max(0.0, written + GRACE + 1 - time.time()))  # both models are older than the grace now

    used = time.time()  # node2 uses mymul now: its daemon serves it to a client (a hit)
    status, body = db.call("POST", "/v1/resolve", {"handle": MYMUL})
    assert status == 200, body
    prune = ("prune", "--max-size", "0", "--grace", f"{GRACE:.0f}s")
    r = store.cli(a, *prune)
    assert r.code == 0, r.out + r.err
    left = stored(store, a)
    assert TEXT not in left, f"the model nobody used was not pruned: prune did not evict: {r.out}"
    assert MYMUL in left, f"node1's prune removed the model node2 uses: {r.out}{r.err}"

    db.stop()  # node2 goes silent; its use is still within the grace, but it no longer counts
    time.sleep(NODE_TIMEOUT + 2)
    assert time.time() - used < GRACE, "the machine was too slow for this test's timeline (grace passed)"
    r = store.cli(a, *prune)
    assert r.code == 0, r.out + r.err
    assert stored(store, a) == set(), f"a silent node's use still protected the model: {r.out}{r.err}"
    v = store.cli(c, "verify")
    assert v.code == 0, v.out + v.err
