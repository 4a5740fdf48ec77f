"""A view of its own (``view`` / CACHEMGR_VIEW): e.g. node-local, with absolute links into a shared store.

Two "nodes" here are two view directories over one store; the same absolute store path is what
makes their links valid on every node (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from tests.support.bundles import run_offline
from tests.support.cli import Cli
from tests.support.env import BASE_ENV
from tests.support.suite import Archives

TFHUB = "https://tfhub.dev/google/mymul/1"
LOAD = ("import sys, cachemgr.shim, tensorflow as tf, tensorflow_hub as hub; "
        "print('RESULT', hub.load(sys.argv[1])(tf.constant([2.0])).numpy().tolist())")


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def test_a_node_local_view_links_into_the_store_and_loads_offline(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(archives.mymul)
    node1, node2 = tmp_path / "node1" / "view", tmp_path / "node2" / "view"
    r = cli("add", TFHUB, str(model), env={"CACHEMGR_VIEW": str(node1)})
    assert r.code == 0, r.err
    link = node1 / _sha1(TFHUB)
    target = os.readlink(link)
    assert os.path.isabs(target) and target.startswith(str(home / "snapshots") + "/")
    assert not (home / "view" / _sha1(TFHUB)).exists()  # the store's own view is not used
    assert (node1 / ".cachemgr-store").read_text().strip() == str(home)

    env = cli("env", env={"CACHEMGR_VIEW": str(node1)})
    assert f"TFHUB_CACHE_DIR={node1}" in env.out

    # Another node: its own view, filled from the store without a download.
    r = cli("--offline", "pull", "--json", TFHUB, env={"CACHEMGR_VIEW": str(node2)})
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["status"] == "present"
    assert os.readlink(node2 / _sha1(TFHUB)) == target

    for view in (node1, node2):
        v = cli("verify", env={"CACHEMGR_VIEW": str(view)})
        assert v.code == 0, v.out + v.err

    uses_before = set(os.listdir(home / "uses")) if (home / "uses").is_dir() else set()
    job = run_offline([sys.executable, "-c", LOAD, TFHUB],
                      dict(BASE_ENV, TFHUB_CACHE_DIR=str(node2), CACHEMGR_NODE_ID="node2"))
    assert job.returncode == 0, job.stderr[-3000:]
    assert "RESULT [6.0]" in job.stdout
    assert set(os.listdir(home / "uses")) - uses_before == {f"{_sha1(TFHUB)}.node2"}  # the shim found the store

    r = cli("rm", TFHUB, env={"CACHEMGR_VIEW": str(node2)})
    assert r.code == 0, r.err
    assert not os.path.lexists(node2 / _sha1(TFHUB))
