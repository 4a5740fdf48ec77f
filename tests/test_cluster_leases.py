"""Leases, hub lock files, node records and prune across nodes, with real `cachemgr` processes.

Each "node" here is a process with its own CACHEMGR_NODE_ID over one store on local disk; the
same rules on a real GlusterFS volume are in test_cluster_*.py (tests/support/gluster.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.cli import Cli
from tests.support.env import REPO
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives

TFHUB = "https://tfhub.dev/google/mymul/1"
CANONICAL_LEASE = "fetch-" + hashlib.sha1(TFHUB.encode()).hexdigest() + ".lease"


def _wait(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


def _start(cli: Cli, node: str, *args: str, **extra: str) -> subprocess.Popen[str]:
    env = {**cli.env, "CACHEMGR_HOME": str(cli.home), "CACHEMGR_NODE_ID": node, **extra}
    return subprocess.Popen([sys.executable, "-m", "cachemgr", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lease_record(home: Path, name: str, node: str, renewed: float, what: str = "") -> None:
    (home / "leases").mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "node": node, "host": "elsewhere", "pid": 1, "token": "t" * 32,
           "started": renewed, "renewed": renewed, "what": what}
    path = home / "leases" / f"{name}.lease"
    path.write_text(json.dumps(doc))
    os.utime(path, (renewed, renewed))


def _age_store(home: Path, seconds: float) -> None:
    """Make everything in the store look written ``seconds`` ago (refs' fetched_at included)."""
    for ref in (home / "refs").glob("*.json"):
        doc = json.loads(ref.read_text())
        doc["fetched_at"] -= seconds
        ref.write_text(json.dumps(doc))
    for path in home.rglob("*"):
        st = path.lstat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds), follow_symlinks=False)


def test_a_second_node_waits_for_the_first_nodes_fetch(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    release = origin.hold("gcs", after_bytes=100, times=1)
    a = _start(cli, "node-a", "pull", TFHUB)
    _wait(lambda: origin.started("gcs") == 1)
    lease = json.loads((home / "leases" / CANONICAL_LEASE).read_text())
    assert lease["node"] == "node-a" and lease["what"] == TFHUB
    hub_lock = home / "view" / (hashlib.sha1(TFHUB.encode()).hexdigest() + ".lock")
    host, pid, uid = hub_lock.read_text().rsplit(".", 2)  # tensorflow_hub's own format
    assert pid == str(a.pid) and len(uid) == 32
    b = _start(cli, "node-b", "pull", "--json", TFHUB)
    _wait(lambda: (home / "nodes" / "node-b.json").exists())  # b is running and past its heartbeat
    time.sleep(1.0)  # b polls the lease meanwhile; it must not start a download of its own
    assert origin.started("gcs") == 1
    release.set()
    out_a, err_a = a.communicate(timeout=60)
    out_b, err_b = b.communicate(timeout=60)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    assert json.loads(out_b)["results"][0]["status"] == "present"
    assert origin.started("gcs") == 1 and origin.completed("gcs") == 1
    assert not (home / "leases" / CANONICAL_LEASE).exists()
    assert not hub_lock.exists()
    assert cli("verify").code == 0


def test_a_killed_holders_lease_is_taken_over_once_stale(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    origin.hold("gcs", after_bytes=100, times=1)
    a = _start(cli, "node-a", "pull", TFHUB, CACHEMGR_LEASE_TIMEOUT="2s")
    _wait(lambda: origin.started("gcs") == 1)
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=30)
    assert (home / "leases" / CANONICAL_LEASE).exists()  # left behind by the dead holder
    r = cli("pull", "--json", TFHUB, env={"CACHEMGR_NODE_ID": "node-b", "CACHEMGR_LEASE_TIMEOUT": "2s"})
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["status"] == "pulled"
    assert origin.started("gcs") == 2 and origin.completed("gcs") == 1
    assert not (home / "leases" / CANONICAL_LEASE).exists()
    assert list((home / "view").glob("*.lock")) == []  # the dead holder's hub lock went too
    v = cli("verify")
    assert v.code == 0, v.out + v.err


def test_a_holder_whose_lease_was_taken_over_publishes_nothing(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    release = origin.hold("gcs", after_bytes=100, times=1)
    a = _start(cli, "node-a", "pull", TFHUB)
    _wait(lambda: origin.started("gcs") == 1)
    _lease_record(home, CANONICAL_LEASE[: -len(".lease")], "node-z", time.time(), TFHUB)  # another node took it
    release.set()
    _out, err = a.communicate(timeout=60)
    assert a.returncode == 10, err
    assert "was taken over by another node" in err and "Traceback" not in err
    assert list((home / "refs").glob("*.json")) == []


def test_only_one_node_prunes_a_store_at_a_time(cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(archives.mymul)
    assert cli("add", TFHUB, str(model)).code == 0
    _lease_record(home, "prune", "node-z", time.time())
    r = cli("prune", "--unused-for", "0s", "--grace", "0s")
    assert r.code == 10
    assert r.err.strip().splitlines()[-1].startswith("cachemgr: error: node node-z (pid 1")
    assert "is running prune" in r.err
    assert cli("prune", "--dry-run", "--unused-for", "0s", "--grace", "0s").code == 0  # a dry run takes no lease
    _lease_record(home, "prune", "node-z", time.time() - 120)  # not renewed for longer than lease_timeout
    r = cli("prune", "--unused-for", "0s", "--grace", "0s", "--json")
    assert r.code == 0, r.err
    assert [e["handle"] for e in json.loads(r.out)["plan"]["evict"]] == [TFHUB]
    assert not (home / "leases" / "prune.lease").exists()


def test_rm_waits_its_turn_like_prune(cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(archives.mymul)
    assert cli("add", TFHUB, str(model)).code == 0
    _lease_record(home, "prune", "node-z", time.time())
    r = cli("rm", TFHUB)
    assert r.code == 10 and "node node-z (pid 1" in r.err and "is running prune" in r.err
    assert cli("path", TFHUB).code == 0  # nothing was removed
    (home / "leases" / "prune.lease").unlink()
    assert cli("rm", TFHUB).code == 0
    assert cli("path", TFHUB).code == 5


def test_prune_keeps_what_another_node_uses_until_that_node_is_silent(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(archives.mymul)
    assert cli("add", TFHUB, str(model)).code == 0
    _age_store(home, 2 * 3600)  # added two hours ago: only uses can protect it from prune
    assert cli("path", TFHUB, env={"CACHEMGR_NODE_ID": "node-b"}).code == 0  # node b uses it
    r = cli("prune", "--unused-for", "0s", "--grace", "1h", "--json", env={"CACHEMGR_NODE_ID": "node-a"})
    assert r.code == 0, r.err
    plan = json.loads(r.out)["plan"]
    assert plan["evict"] == []
    assert "by node-b, within the grace period" in plan["protected"][0]["reason"]

    nodes = json.loads(cli("nodes", "--json").out)
    row = {n["node"]: n for n in nodes["nodes"]}["node-b"]
    assert row["used_within_grace"] == [TFHUB] and row["silent"] is False

    past = time.time() - 30  # node b has been silent for 30 s since: past a node_timeout of 10 s
    for f in (home / "uses").iterdir():
        os.utime(f, (past, past))
    for f in (home / "nodes").iterdir():
        doc = json.loads(f.read_text())
        doc["heartbeat"] = past
        f.write_text(json.dumps(doc))
    env = {"CACHEMGR_NODE_ID": "node-a", "CACHEMGR_NODE_TIMEOUT": "10s"}
    silent = {n["node"]: n for n in json.loads(cli("nodes", "--json", env=env).out)["nodes"]}["node-b"]
    assert silent["silent"] is True and silent["used_within_grace"] == []
    text = cli("nodes", env=env).out
    assert "node-b" in text and "holds nothing back" in text
    r = cli("prune", "--unused-for", "0s", "--grace", "1h", "--json", env=env)
    assert r.code == 0, r.err
    assert [e["handle"] for e in json.loads(r.out)["plan"]["evict"]] == [TFHUB]
    assert cli("verify").code == 0


def test_prune_never_removes_a_model_another_node_is_fetching(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(archives.mymul)
    assert cli("add", TFHUB, str(model)).code == 0
    _lease_record(home, CANONICAL_LEASE[: -len(".lease")], "node-z", time.time(), TFHUB)  # a refresh elsewhere
    r = cli("prune", "--unused-for", "0s", "--grace", "0s", "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)["plan"]
    assert plan["evict"] == []
    assert plan["protected"][0]["reason"] == "being fetched under a live lease (in flight)"
    rows = {n["node"]: n for n in json.loads(cli("nodes", "--json").out)["nodes"]}
    assert rows["node-z"]["leases"] == [f"fetch {TFHUB}"]
