"""`cachemgr prune` on real stores pulled from the fake origin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cachemgr.store.fs import unique_name
from tests.support.cli import Cli
from tests.support.env import BASE_ENV, REPO
from tests.support.lifecycle import (
    MYMUL,
    TEXT1,
    TEXT2,
    blob_bytes,
    consistency_problems,
    file_bytes,
    refs,
    sha1,
    tree_state,
)
from tests.support.origin import FakeOrigin

# `cachemgr du --json`'s models by handle: JSON documents.
DuModels = dict[str, dict[str, Any]]


@pytest.fixture
def three(cli: Cli) -> DuModels:
    r = cli("pull", MYMUL, TEXT1, TEXT2)
    assert r.code == 0, r.err
    return {m["handle"]: m for m in json.loads(cli("du", "--json").out)["models"]}


def test_max_size_respects_pins_and_lru_and_ends_under_budget(cli: Cli, home: Path, three: DuModels) -> None:
    assert cli("pin", TEXT1, "--reason", "paper").code == 0
    # Use order: TEXT2 first (least recent), then MYMUL; TEXT1 is pinned and never used.
    for handle in (TEXT2, MYMUL):
        assert cli("path", handle).code == 0
        time.sleep(0.02)
    total = blob_bytes(home)
    assert total == sum(int(m["unique"]) for m in three.values()) + int(three[TEXT1]["shared"])
    budget = total - int(three[TEXT2]["unique"])
    on_disk = file_bytes(home)
    r = cli("prune", "--max-size", str(budget), "--grace", "0", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [e["handle"] for e in doc["plan"]["evict"]] == [TEXT2]
    assert doc["result"]["evicted"] == [TEXT2]
    assert int(three[TEXT2]["unique"]) == total - blob_bytes(home)
    # Freed = every byte whose last link went: blobs, manifest, ref, alias and descriptor files.
    assert doc["result"]["freed_bytes"] == on_disk - file_bytes(home) > int(three[TEXT2]["unique"])
    assert blob_bytes(home) <= budget
    assert cli("path", TEXT2).code == 5
    assert not (home / "view" / sha1(TEXT2)).exists()
    assert (home / "view" / sha1(TEXT1) / "assets" / "vocab.txt").is_file()  # shared blob kept

    # Budget 0: everything unpinned goes, the pinned model stays, and the plan says why.
    r = cli("prune", "--max-size", "0", "--grace", "0", "--json")
    doc = json.loads(r.out)
    assert doc["result"]["evicted"] == [MYMUL]
    assert any(p["handle"] == TEXT1 and "pinned by" in p["reason"] and "paper" in p["reason"]
               for p in doc["plan"]["protected"])
    assert doc["plan"]["unmet"]
    assert blob_bytes(home) == int(three[TEXT1]["size"])
    assert consistency_problems(home) == []


def test_dry_run_deletes_nothing_and_prints_the_plan(cli: Cli, home: Path, three: DuModels) -> None:
    before = tree_state(home)
    r = cli("prune", "--max-size", "0", "--grace", "0", "--dry-run")
    assert r.code == 0, r.err
    assert tree_state(home) == before
    for handle in (MYMUL, TEXT1, TEXT2):
        line = next(x for x in r.out.splitlines() if f" {handle} " in x)
        assert line.startswith("would evict") and "least recently used" in line and "KiB" in line
    assert "nothing deleted" in r.out


def test_grace_period_keeps_fresh_models(cli: Cli, home: Path, three: DuModels) -> None:
    before = tree_state(home)
    doc = json.loads(cli("prune", "--max-size", "0", "--json").out)  # default grace: 1h
    assert doc["plan"]["evict"] == [] and doc["result"]["freed_bytes"] == 0
    assert {p["handle"] for p in doc["plan"]["protected"]} == {MYMUL, TEXT1, TEXT2}
    assert tree_state(home) == before


def test_keep_versions(cli: Cli, home: Path, three: DuModels) -> None:
    doc = json.loads(cli("prune", "--keep-versions", "1", "--grace", "0", "--json").out)
    assert doc["result"]["evicted"] == [TEXT1]
    assert cli("path", TEXT2).code == 0 and cli("path", MYMUL).code == 0


def test_leftovers_are_collected_after_the_grace_period(cli: Cli, home: Path, three: DuModels) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = unique_name("ingest").rsplit(".", 2)
    temp = home / "tmp" / f"{name[0]}.{dead.stdout.strip()}.{uuid.uuid4().hex[:16]}"
    (temp / "tree").mkdir(parents=True)
    (temp / "tree" / "part").write_bytes(b"x" * 1000)
    orphan = "ab" + "0" * 62
    (home / "blobs" / "sha256" / "ab").mkdir(exist_ok=True)
    (home / "blobs" / "sha256" / "ab" / orphan).write_bytes(b"y" * 500)
    (home / "snapshots" / ("cd" + "0" * 62)).mkdir()

    assert json.loads(cli("prune", "--json").out)["result"]["freed_bytes"] == 0  # younger than 1h
    assert temp.exists()
    # Unnamed content (no ref) is what a pull looks like before it writes its ref: kept at least
    # 10 minutes even with --grace 0. Temps of dead processes are not in flight.
    doc = json.loads(cli("prune", "--grace", "0", "--json").out)
    assert doc["result"]["removed"] == {"snapshots": 0, "manifests": 0, "blobs": 0, "temps": 1}
    assert not temp.exists()
    temp.mkdir()
    (temp / "part").write_bytes(b"x" * 1000)
    old = time.time() - 3600
    for p in (temp, home / "blobs" / "sha256" / "ab" / orphan, home / "snapshots" / ("cd" + "0" * 62)):
        os.utime(p, (old, old))
    doc = json.loads(cli("prune", "--grace", "0", "--json").out)
    assert doc["result"]["removed"] == {"snapshots": 1, "manifests": 0, "blobs": 1, "temps": 1}
    assert doc["result"]["freed_bytes"] == 1500
    assert not temp.exists() and not (home / "blobs" / "sha256" / "ab" / orphan).exists()
    assert consistency_problems(home) == []


HOLDER = """
import sys, tensorflow as tf, tensorflow_hub as hub
m = hub.load(sys.argv[1])
print("ready", m(tf.constant([2.0])).numpy().tolist(), flush=True)
for line in sys.stdin:
    print("value", m(tf.constant([float(line)])).numpy().tolist(), flush=True)
"""


def test_model_loaded_by_a_running_process_survives_prune(cli: Cli, home: Path, three: DuModels) -> None:
    env = dict(BASE_ENV, TFHUB_CACHE_DIR=str(home / "view"))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, MYMUL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().split() == ["ready", "[6.0]"]
        doc = json.loads(cli("prune", "--max-size", "0", "--grace", "0", "--json").out)
        assert MYMUL in doc["result"]["evicted"]
        assert not (home / "view" / sha1(MYMUL)).exists()
        for x in ("1.5", "4"):
            proc.stdin.write(x + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["value", f"[{3 * float(x)}]"]
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_concurrent_prune_and_pull_leave_a_consistent_store(cli: Cli, home: Path, origin: FakeOrigin) -> None:
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    env = {**cli.env, "CACHEMGR_HOME": str(home)}
    py = f"{sys.executable} -m cachemgr"
    pull = f"for i in 1 2 3 4; do {py} pull {MYMUL} {TEXT1} {TEXT2} || exit 1; done"
    prune = f"for i in 1 2 3 4 5; do {py} prune --max-size 0 --grace 0 >/dev/null || exit 1; done"
    procs = [subprocess.Popen(["bash", "-c", cmd], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd in (pull, prune)]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    assert origin.completed("gcs") > 3, "prune never removed anything the pulls then fetched again"
    assert consistency_problems(home) == [], [(r["handle"], r["manifest"]) for r in refs(home)]
    assert not os.listdir(home / "tmp")
    r = cli("verify")
    assert r.code == 0, r.out + r.err
