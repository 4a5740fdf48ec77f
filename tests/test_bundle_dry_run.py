"""`cachemgr import --dry-run`: what an import would add, skip and miss, with the bundle verified,
and the receiving store byte-for-byte as it was (or not made at all)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.support.bundles import flip_blob, members, write_bundle
from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL, TEXT1, TEXT2


def exact_tree(home: Path) -> list[tuple[str, int, int, str]]:
    """Every entry under ``home``, temps and last-use records included: path, mode, mtime, content."""
    out = []
    for root, dirs, files in os.walk(home):
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            st = os.lstat(p)
            if os.path.islink(p):
                body = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                body = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                body = "dir"
            out.append((os.path.relpath(p, home), st.st_mode, st.st_mtime_ns, body))
    return sorted(out)


def setup(cli: Cli, tmp_path: Path) -> tuple[Cli, Path, Path, Path]:
    """A source store with three models, a full bundle of mymul + text/1, and a receiver holding mymul."""
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    full, small = tmp_path / "full.tar.zst", tmp_path / "mymul.tar.zst"
    assert cli("export", MYMUL, TEXT1, "-o", str(full)).code == 0
    assert cli("export", MYMUL, "-o", str(small)).code == 0
    home = tmp_path / "receiver"
    receiver = Cli(home, cli.env)
    assert receiver("import", str(small)).code == 0
    return receiver, home, full, small


def test_dry_run_says_what_would_be_added_and_skipped_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    receiver, home, full, _small = setup(cli, tmp_path)
    before = exact_tree(home)
    r = receiver("--offline", "import", "--dry-run", str(full))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith(f"dry run: {full} would add 1 model, update 0, leave 1 unchanged; "), r.out
    assert "already here (skipped); 0 missing" in lines[0], r.out
    assert f"  add      {TEXT1}" in lines and f"  skip     {MYMUL}" in lines, r.out
    assert lines[-1] == "dry run: nothing was changed" and "signature: none" in lines, r.out
    assert exact_tree(home) == before, "a dry run changed the store"
    doc = json.loads(receiver("import", "--dry-run", str(full), "--json").out)["results"][0]
    assert doc["dry_run"] is True and doc["added"] == [TEXT1] and doc["unchanged"] == [MYMUL]
    assert doc["missing"] == [] and doc["blobs_added"] > 0 and doc["blobs_skipped"] > 0
    assert exact_tree(home) == before, "a dry run with --json changed the store"
    # The real import does what the dry run said.
    real = json.loads(receiver("import", str(full), "--json").out)["results"][0]
    assert real["dry_run"] is False
    for key in ("added", "updated", "unchanged", "blobs_added", "bytes_added", "blobs_skipped"):
        assert real[key] == doc[key], key


def test_dry_run_into_a_home_that_does_not_exist_makes_nothing(cli: Cli, tmp_path: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    bundle = tmp_path / "b.tar.zst"
    assert cli("export", MYMUL, "-o", str(bundle)).code == 0
    nowhere = tmp_path / "new-home"
    r = Cli(nowhere, cli.env)("import", "--dry-run", str(bundle), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["added"] == [MYMUL]
    assert not nowhere.exists()


def test_dry_run_names_missing_base_blobs_and_a_tampered_bundle_fails_as_import_would(cli: Cli,
                                                                                     tmp_path: Path) -> None:
    receiver, home, full, _small = setup(cli, tmp_path)
    # A delta made for a receiver that holds text/1 too: this receiver lacks the shared base.
    other = tmp_path / "other"
    assert Cli(other, cli.env)("import", str(full)).code == 0
    have = tmp_path / "have.json"
    assert Cli(other, cli.env)("inventory", "-o", str(have)).code == 0
    delta = tmp_path / "delta.tar.zst"
    assert cli("export", TEXT2, "--have", str(have), "-o", str(delta)).code == 0
    before = exact_tree(home)
    r = receiver("import", "--dry-run", str(delta))
    assert r.code == 21, (r.code, r.err)
    missing = [x for x in r.out.splitlines() if x.startswith("  missing  blob ")]
    assert missing and f"  add      {TEXT2}" in r.out, r.out
    assert r.err.strip().startswith("cachemgr: error: ") and "an import would be refused" in r.err, r.err
    doc = json.loads(receiver("import", "--dry-run", str(delta), "--json").out)["results"][0]
    assert len(doc["missing"]) == len(missing) and all(d in r.out for d in doc["missing"])
    assert exact_tree(home) == before
    # Every packed blob is hashed, as a real import would: a flipped byte is refused.
    bad = write_bundle(tmp_path / "bad.tar.zst", flip_blob(members(full)))
    r = receiver("import", "--dry-run", str(bad))
    assert r.code == 8 and "does not match its sha256" in r.err, r.err
    assert exact_tree(home) == before
