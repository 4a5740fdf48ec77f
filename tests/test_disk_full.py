"""Disk full (issue 10): a store on a small real tmpfs that fills up.

``pull``, ``import`` and ``verify --repair`` fail fast with exit 10 and "no space", keep nothing
partial, and leave the store verifying clean; models already there keep loading with real
tensorflow_hub; the daemon keeps answering hits while its disk is full and recovers by itself
once space is freed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli, Result
from tests.support.daemons import Daemon
from tests.support.diskfull import SmallDisk
from tests.support.env import BASE_ENV, REPO
from tests.support.lifecycle import MYMUL, TEXT1, TEXT2
from tests.support.origin import FakeOrigin

NO_SPACE = 10
HUB_LOAD = ("import sys, tensorflow as tf, tensorflow_hub as hub\n"
            "print('LOADED', hub.load(sys.argv[1])(tf.constant([2.0])).numpy().tolist())")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with SmallDisk(tmp_path, "6m") as d:
        yield d


def assert_no_space(r: Result, disk: SmallDisk) -> None:
    assert r.code == NO_SPACE, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "no space" in lines[0] and "Traceback" not in r.err, r.err
    assert "free space" in lines[0], r.err  # the fix
    tmp = disk.home / "tmp"
    assert sorted(p.name for p in tmp.iterdir()) == [], "the failed command left temps behind"
    assert disk.outside_store() == [], "something was written on the disk outside the store"


def assert_verifies(cli: Cli) -> dict[str, object]:
    r = cli("verify", "--json")
    assert r.code == 0, r.out + r.err
    doc: dict[str, object] = json.loads(r.out)
    return doc


def refs(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "refs").iterdir())


def test_pull_import_and_repair_fail_fast_and_keep_nothing(disk: SmallDisk, cli: Cli, origin: FakeOrigin,
                                                           tmp_path: Path) -> None:
    store = Cli(disk.home, cli.env)
    assert store("pull", MYMUL, TEXT1).code == 0
    src = Cli(tmp_path / "src", cli.env)
    assert src("pull", TEXT2).code == 0
    bundle = tmp_path / "text2.tar.zst"
    assert src("export", TEXT2, "-o", str(bundle)).code == 0
    before = refs(disk.home)

    assert disk.fill() > 0
    origin.reset_counters()
    assert_no_space(store("pull", TEXT2), disk)
    assert origin.started() <= 1, "a full disk is not retried: the archive was asked for more than once"
    assert_no_space(store("import", str(bundle)), disk)
    assert refs(disk.home) == before
    assert assert_verifies(store)["models"] == 2

    # Models already there keep loading (real tensorflow_hub, in a child, offline through the view).
    env = dict(BASE_ENV, TFHUB_CACHE_DIR=str(disk.home / "view"))
    proc = subprocess.run([sys.executable, "-c", HUB_LOAD, MYMUL], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0 and "LOADED [6.0]" in proc.stdout, proc.stderr[-3000:]

    # A corrupt blob whose re-fetch finds the disk full: repair stops with the same error.
    info = json.loads(store("info", TEXT1, "--json").out)
    manifest = json.loads((disk.home / "manifests" / "sha256" / f"{info['manifest']}.json").read_bytes())
    _path, _mode, _size, sha = max(manifest["files"], key=lambda f: f[2])
    blob = disk.home / "blobs" / "sha256" / sha[:2] / sha
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0x01
    blob.write_bytes(bytes(data))  # same size: rewriting it in place needs no new space
    assert_no_space(store("verify", "--repair"), disk)

    disk.free()
    r = store("verify", "--repair")
    assert r.code == 12, r.out + r.err  # all repaired, now that there is room
    assert assert_verifies(store)["models"] == 2
    assert store("import", str(bundle)).code == 0
    assert store("pull", TEXT2).code == 0
    assert assert_verifies(store)["models"] == 3
    assert sorted(p.name for p in (disk.home / "tmp").iterdir()) == []


def test_daemon_answers_hits_while_full_and_recovers(disk: SmallDisk, cli: Cli, origin: FakeOrigin,
                                                    tmp_path: Path) -> None:
    store = Cli(disk.home, cli.env)
    assert store("pull", MYMUL).code == 0
    d = Daemon(disk.home, cli.env, sock=tmp_path / "d.sock").wait_ready()
    try:
        assert d.call("POST", "/v1/resolve", {"handle": MYMUL})[0] == 200
        disk.fill()
        for _ in range(3):
            code, doc = d.call("POST", "/v1/resolve", {"handle": MYMUL})
            assert code == 200, doc
        code, doc = d.call("POST", "/v1/resolve", {"handle": TEXT1})
        assert code == 507 and doc["error"]["type"] == "no_space", doc
        assert "no space" in doc["error"]["message"] and "\n" not in doc["error"]["message"], doc
        assert d.call("POST", "/v1/resolve", {"handle": MYMUL})[0] == 200  # still a hit after the failure
        assert d.proc.poll() is None, d.output()

        disk.free()  # nobody restarts or tells the daemon: the next miss just works
        code, doc = d.call("POST", "/v1/resolve", {"handle": TEXT1})
        assert code == 200, doc
        assert d.call("POST", "/v1/resolve", {"handle": MYMUL})[0] == 200
    finally:
        d.stop()
    assert "Traceback" not in d.output(), d.output()
    assert sorted(p.name for p in (disk.home / "tmp").iterdir()) == []
    assert disk.outside_store() == []
    assert assert_verifies(store)["models"] == 2
