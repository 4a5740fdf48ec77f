"""Hostile model manifests from every source are refused before anything is written.

A compromised upstream daemon, a crafted bundle and a shared store written by another host
each hand cachemgr a manifest with one thing wrong: a path that climbs out of the snapshot,
an absolute path, an entry that is both a file and a directory, a duplicate path, no
SavedModel structure, or a size that is not the blob's. Each is refused with a one-line
error, nothing appears outside the store, and what the store held before still loads.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import hostile
from tests.support.bundles import members, write_bundle
from tests.support.cli import Cli
from tests.support.suite import Models

SEED = "https://tfhub.dev/google/seed/1"
EVIL = "https://tfhub.dev/evil/m/1"
CASES = sorted(hostile.cases(Path("/x")))


def genuine(cli: Cli, models: Models) -> hostile.Doc:
    """The manifest document of mymul, as cachemgr wrote it into ``cli``'s store."""
    r = cli("add", SEED, str(models.mymul))
    assert r.code == 0, r.err
    info = json.loads(cli("info", SEED, "--json").out)
    doc: hostile.Doc = json.loads((cli.home / "manifests" / "sha256" / f"{info['manifest']}.json").read_bytes())
    return doc


def outside_is_empty(outside: Path) -> None:
    assert list(outside.rglob("*")) == [], f"a hostile manifest wrote outside the store: {list(outside.rglob('*'))}"


def seed_still_loads(cli: Cli) -> None:
    r = cli("path", SEED)
    assert r.code == 0, r.err
    assert (Path(r.out.strip()) / "saved_model.pb").is_file()
    tmp = cli.home / "tmp"
    assert not tmp.is_dir() or sorted(os.listdir(tmp)) == [], f"temps left behind: {os.listdir(tmp)}"


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and "Traceback" not in err, err
    return lines[-1]


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_upstream_manifest_is_refused(case: str, cli: Cli, models: Models, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tamper, needle = hostile.cases(outside / "pwned")[case]
    doc = tamper(genuine(cli, models))
    upstream = hostile.HostileUpstream(doc, cli.home / "blobs" / "sha256", EVIL)
    # The victim's store already holds the seed, and lacks the blobs the upstream serves.
    victim = Cli(tmp_path / "victim", cli.env)
    assert victim("add", SEED, str(models.mymul)).code == 0
    before = sorted(os.listdir(victim.home / "refs"))
    with upstream.running() as base:
        r = victim("pull", EVIL, env={"CACHEMGR_UPSTREAMS": base})
    assert any(p.startswith("/v1/manifests/") for p in upstream.requests), upstream.requests
    assert r.code != 0, r.out
    assert needle in r.err and f"upstream {base} failed for {EVIL}" in r.err, r.err
    one_line(r.err)
    outside_is_empty(outside)
    assert sorted(os.listdir(victim.home / "refs")) == before
    assert victim("path", EVIL).code == 5
    seed_still_loads(victim)
    v = victim("verify")
    assert v.code == 0, v.out + v.err


def _bundle_with(tamper: Callable[[hostile.Doc], hostile.Doc], bundle: Path, out: Path) -> Path:
    """``bundle`` with its one model manifest replaced by ``tamper(manifest)``, consistently renamed."""
    items = members(bundle)
    info, body = items[0]
    doc = json.loads(body)
    (old, mdoc), = doc["manifests"].items()
    bad = tamper(mdoc)
    new = hostile.digest_of(bad)
    doc["manifests"] = {new: bad}
    for ref in doc["refs"]:
        ref["manifest"] = new
    sizes = {sha: size for _path, _mode, size, sha in bad["files"]}
    for blob in doc["blobs"]:  # the blob list agrees with the lie, so the blobs themselves must catch it
        blob["size"] = sizes.get(blob["sha256"], blob["size"])
    return write_bundle(out, [(info, json.dumps(doc).encode())] + items[1:])


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_bundle_manifest_is_refused(case: str, cli: Cli, models: Models, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tamper, needle = hostile.cases(outside / "pwned")[case]
    genuine(cli, models)
    full = tmp_path / "seed.tar.zst"
    assert cli("export", SEED, "-o", str(full)).code == 0
    bad = _bundle_with(tamper, full, tmp_path / "bad.tar.zst")
    control = _bundle_with(lambda d: d, full, tmp_path / "control.tar.zst")
    victim = Cli(tmp_path / "victim", cli.env)
    r = victim("import", str(bad))
    assert r.code != 0 and needle in one_line(r.err), r.err
    outside_is_empty(outside)
    assert not (victim.home / "refs").is_dir() or os.listdir(victim.home / "refs") == []
    r = victim("import", str(control))  # the rewriting itself keeps a bundle importable
    assert r.code == 0, r.err
    seed_still_loads(victim)


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_manifest_in_a_shared_store_is_refused(case: str, cli: Cli, models: Models,
                                                         tmp_path: Path) -> None:
    """Another host wrote a ref and a manifest into the shared store; no snapshot exists here yet."""
    outside = tmp_path / "outside"
    outside.mkdir()
    tamper, needle = hostile.cases(outside / "pwned")[case]
    doc = tamper(genuine(cli, models))
    digest = hostile.digest_of(doc)
    (cli.home / "manifests" / "sha256" / f"{digest}.json").write_bytes(hostile.canonical(doc))
    ref = json.loads(next((cli.home / "refs").glob("*.json")).read_bytes())
    ref.update(handle=EVIL, asked=EVIL, manifest=digest, aliases=[EVIL])
    from cachemgr.store.refs import key_of

    (cli.home / "refs" / f"{key_of(EVIL)}.json").write_text(json.dumps(ref))
    r = cli("pull", EVIL, env={"CACHEMGR_OFFLINE": "1"})
    assert r.code != 0 and needle in one_line(r.err), r.err
    outside_is_empty(outside)
    assert not (cli.home / "snapshots" / digest).exists()
    seed_still_loads(cli)
    v = cli("verify")
    found = [line for line in v.out.splitlines() if digest in line]
    assert v.code == 11 and any(needle in line for line in found), v.out + v.err


def test_the_tar_helper_members_round_trip(tmp_path: Path) -> None:
    """write_bundle keeps member names as given (the hostile cases rely on it)."""
    out = write_bundle(tmp_path / "b.tar.zst", [(tarfile.TarInfo("manifest.json"), b"{}")])
    assert [i.name for i, _ in members(out)] == ["manifest.json"]
