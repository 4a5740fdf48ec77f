"""`cachemgr rm HANDLE...`: refs, aliases and view links go; blobs no other model uses are collected;
pinned models are refused unless --force; --dry-run changes nothing; --json says the same."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL, TEXT1, TEXT2, blob_bytes, consistency_problems, sha1, tree_state

KAGGLE_TEXT1 = "https://www.kaggle.com/models/google/text-embed/tensorFlow2/text-embed/1"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def blobs_of(cli: Cli, home: Path, handle: str) -> set[str]:
    digest = json.loads(cli("info", handle, "--json").out)["manifest"]
    doc = json.loads((home / "manifests" / "sha256" / f"{digest}.json").read_bytes())
    return {f[3] for f in doc["files"]}


def test_rm_removes_the_model_and_only_the_blobs_no_other_model_uses(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    info = json.loads(cli("info", TEXT1, "--json").out)
    mine, other = blobs_of(cli, home, TEXT1), blobs_of(cli, home, TEXT2)
    shared = mine & other
    assert shared and mine - other  # the vocabulary is shared, the variables are not
    before = blob_bytes(home)
    r = cli("rm", KAGGLE_TEXT1)  # any alias names the model
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith(f"remove  {TEXT1}  ") and " KiB  frees " in lines[0], r.out
    assert lines[-1].startswith("removed 1 model; freed ") and "KiB" in lines[-1], r.out
    # The ref, its aliases and its view links are gone; so are the snapshot and manifest.
    r = cli("info", TEXT1)
    assert r.code == 5 and "not in the store" in r.err
    for alias in info["aliases"]:
        assert not (home / "view" / sha1(alias)).exists() and not (home / "view" / sha1(alias)).is_symlink()
    assert not (home / "snapshots" / info["manifest"]).exists()
    assert not (home / "manifests" / "sha256" / f"{info['manifest']}.json").exists()
    present = {p.name for p in (home / "blobs" / "sha256").rglob("*") if p.is_file()}
    assert not (mine - other) & present and shared <= present
    assert before - blob_bytes(home) > 0
    # What stays is whole: text-embed/2 still has its shared vocabulary, and loads as before.
    assert consistency_problems(home) == []
    assert [m["handle"] for m in json.loads(cli("ls", "--json").out)["models"]] == [MYMUL, TEXT2]
    assert cli("verify").code == 0


def test_dry_run_changes_nothing_and_json_tells_the_same_plan(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    state = tree_state(home)
    r = cli("rm", TEXT2, MYMUL, "--dry-run")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].startswith(f"would remove  {TEXT2}  ")
    assert r.out.splitlines()[1].startswith(f"would remove  {MYMUL}  ")
    assert r.out.splitlines()[-1].startswith("dry run: would free ") and "nothing deleted" in r.out
    r = cli("rm", TEXT2, MYMUL, "--dry-run", "--json")
    plan = json.loads(r.out)["plan"]
    assert [e["handle"] for e in plan["remove"]] == [TEXT2, MYMUL] and plan["snapshots"] == 2
    assert tree_state(home) == state
    before = blob_bytes(home)
    r = cli("rm", TEXT2, MYMUL, "--json")
    doc = json.loads(r.out)
    assert r.code == 0 and doc["result"]["evicted"] == [TEXT2, MYMUL], r.out
    assert before - blob_bytes(home) == doc["plan"]["bytes_to_free"] > 0
    assert doc["plan"]["blobs"] == doc["result"]["removed"]["blobs"]
    assert consistency_problems(home) == [] and cli("verify").code == 0


def test_a_pinned_model_is_refused_unless_forced(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1).code == 0
    assert cli("pin", MYMUL, "--reason", "paper").code == 0
    state = tree_state(home)
    r = cli("rm", TEXT1, MYMUL)
    line = one_line(r.err)
    assert r.code == 2 and line.startswith(f"cachemgr: error: {MYMUL} is pinned by ") and "(paper)" in line, r.err
    assert "nothing was removed" in line and "--force" in line and "cachemgr unpin" in line
    assert tree_state(home) == state, "a refused rm removed something"
    r = cli("rm", MYMUL, "--force")
    assert r.code == 0, r.err
    assert f"unpin  {MYMUL}  (pinned by " in r.out
    assert json.loads(cli("pins", "--json", "--no-check").out)["pins"] == []
    assert cli("path", MYMUL).code == 5 and cli("path", TEXT1).code == 0


def test_handles_are_checked_before_anything_goes(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    state = tree_state(home)
    r = cli("rm", MYMUL, "bad handle")
    assert r.code == 4 and "invalid handle" in one_line(r.err)
    r = cli("rm", MYMUL, "https://tfhub.dev/google/absent/1")
    assert r.code == 5 and "https://tfhub.dev/google/absent/1 is not in the store" in one_line(r.err)
    assert tree_state(home) == state
    r = cli("rm")
    assert r.code == 2 and "Missing argument" in one_line(r.err)
