"""A prune killed half-way: the next command puts back what refs need from its trash.

The store is left exactly as a prune killed at that point leaves it (its trash under tmp/,
named for a process that is gone), built step by step as prune_exec does it, so that the
window a random kill may miss is hit every time (test_cluster_kills.py kills at random).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from cachemgr.store.usage import host_tag
from tests.support.cli import Cli
from tests.support.suite import Archives

TFHUB = "https://tfhub.dev/google/mymul/1"
OTHER = "https://tfhub.dev/google/mymul-copy/1"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _trash(home: Path) -> Path:
    trash = home / "tmp" / f"prune.{host_tag()}.{_dead_pid()}.0123456789abcdef"
    for sub in ("refs", "snapshots", "manifests", "blobs"):
        (trash / sub).mkdir(parents=True)
    return trash


def _model(home: Path, handle: str) -> tuple[Path, dict[str, object]]:
    for ref in (home / "refs").glob("*.json"):
        doc = json.loads(ref.read_text())
        if doc["handle"] == handle:
            return ref, doc
    raise AssertionError(f"no ref for {handle}")


def _move_content(home: Path, trash: Path, digest: str) -> None:
    """Snapshot (half emptied, as prune empties it), manifest and blobs into the trash."""
    os.rename(home / "snapshots" / digest, trash / "snapshots" / digest)
    first = next(p for p in (trash / "snapshots" / digest).rglob("*") if p.is_file())
    first.unlink()
    os.rename(home / "manifests" / "sha256" / f"{digest}.json", trash / "manifests" / f"{digest}.json")
    manifest = json.loads((trash / "manifests" / f"{digest}.json").read_text())
    for entry in manifest["files"]:
        sha = entry[3] if isinstance(entry, list) else entry["sha256"]
        blob = home / "blobs" / "sha256" / sha[:2] / sha
        if blob.exists():
            os.rename(blob, trash / "blobs" / sha)


def _add(cli: Cli, tmp_path: Path, archives: Archives, *handles: str) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(archives.mymul)
    for handle in handles:
        r = cli("add", handle, str(model))
        assert r.code == 0, r.err


def test_a_prune_killed_after_moving_a_model_aside_is_rolled_back(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    _add(cli, tmp_path, archives, TFHUB)
    ref, doc = _model(home, TFHUB)
    trash = _trash(home)
    os.rename(ref, trash / "refs" / ref.name)  # prune_exec._drop_model: the ref first, then its links
    for link in (home / "view").iterdir():
        if link.is_symlink():
            link.unlink()
    _move_content(home, trash, str(doc["manifest"]))

    v = cli("verify")
    assert v.code == 0, v.out + v.err
    assert not trash.exists()
    r = cli("path", TFHUB)
    assert r.code == 0, r.err
    assert Path(r.out.strip()).is_dir() and any(Path(r.out.strip()).iterdir())


def test_content_a_racing_ref_needs_comes_back_when_the_prune_was_killed(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    """The prune evicted TFHUB while a pull re-published the same content as OTHER; killed before
    it re-read the refs, it holds what OTHER's ref and view links name."""
    _add(cli, tmp_path, archives, TFHUB, OTHER)
    ref, doc = _model(home, TFHUB)
    trash = _trash(home)
    os.rename(ref, trash / "refs" / ref.name)
    _move_content(home, trash, str(doc["manifest"]))
    os.unlink(trash / "refs" / ref.name)  # that model's own eviction had gone through

    v = cli("verify")
    assert v.code == 0, v.out + v.err
    assert cli("path", TFHUB).code == 5
    r = cli("path", OTHER)
    assert r.code == 0, r.err
    assert not trash.exists()


def test_prune_itself_rolls_a_dead_prune_back_before_collecting_it(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    _add(cli, tmp_path, archives, TFHUB)
    ref, doc = _model(home, TFHUB)
    trash = _trash(home)
    _move_content(home, trash, str(doc["manifest"]))
    shutil.rmtree(home / "tmp" / trash.name / "refs")  # killed before it moved any ref
    r = cli("prune", "--grace", "0s", "--json")  # no eviction rule: it only collects leftovers
    assert r.code == 0, r.err
    assert cli("verify").code == 0
    assert cli("path", TFHUB).code == 0


def test_a_dead_runs_temp_link_to_a_snapshot_is_removed_not_followed(
        cli: Cli, archives: Archives, home: Path, tmp_path: Path) -> None:
    """A run killed between making its view link in tmp/ and renaming it into view/ leaves
    ``tmp/l.*`` pointing at a snapshot; collecting it must not empty the snapshot."""
    _add(cli, tmp_path, archives, TFHUB)
    _ref, doc = _model(home, TFHUB)
    link = home / "tmp" / f"l.{host_tag()}.{_dead_pid()}.0123456789abcdef"
    os.symlink(os.path.join("..", "snapshots", str(doc["manifest"])), link)
    old = 1_000_000_000.0
    os.utime(link, (old, old), follow_symlinks=False)
    files = sorted(p.relative_to(home) for p in (home / "snapshots").rglob("*") if p.is_file())
    r = cli("prune", "--grace", "0s", "--json")
    assert r.code == 0, r.err
    assert link.name in json.loads(r.out)["plan"]["leftovers"]["temps"]
    assert not os.path.lexists(link)
    assert sorted(p.relative_to(home) for p in (home / "snapshots").rglob("*") if p.is_file()) == files
    assert cli("verify").code == 0

