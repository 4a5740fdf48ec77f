"""Bundles crafted to hurt (issue 10), imported with the real CLI into a store on a small tmpfs,
in a child whose address space is capped.

A blob that inflates to 100 GiB, a tar member that claims more than its manifest, a zstd bomb
after the end of the tar and a manifest past the entry cap are refused while the bundle
streams (before the disk or the memory could fill: either would fail with another error); a
signature over another manifest is refused. Each leaves the store as it was: nothing visible,
no temps, ``verify`` clean, nothing written outside it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bundles import manifest_of, members, state, write_bundle
from tests.support.cli import Cli
from tests.support.diskfull import SmallDisk
from tests.support.env import BASE_ENV, REPO
from tests.support.hostile_archives import Zeros
from tests.support.hostile_bundles import GIB, as_raw, inflate_largest_file, with_many_entries, write_raw_bundle
from tests.support.lifecycle import MYMUL, TEXT1
from tests.support.origin import FakeOrigin

MEMORY_CAP = 1024 * 1024 * 1024
CLAIM = 100 * GIB  # over the default max_model_size (64 GiB), and over any disk here


class Src:
    def __init__(self, root: Path, origin: FakeOrigin) -> None:
        self.root = root
        self.env = dict(BASE_ENV, CACHEMGR_MIRRORS=origin.mirrors, XDG_CONFIG_HOME=str(root / "xdg"))
        self.cli = Cli(root / "src-home", self.env)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory, _origin_server: FakeOrigin) -> Src:
    _origin_server.reset()
    s = Src(tmp_path_factory.mktemp("hostile-bundle-src"), _origin_server)
    assert s.cli("pull", MYMUL, TEXT1).code == 0
    assert s.cli("keygen", str(s.root / "k1")).code == 0
    for args in (["export", MYMUL, "-o", str(s.root / "mymul.tar.zst")],
                 ["export", TEXT1, "--sign", str(s.root / "k1"), "-o", str(s.root / "text-signed.tar.zst")]):
        r = s.cli(*args)
        assert r.code == 0, r.err
    return s


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with SmallDisk(tmp_path / "small", "16m") as d:
        yield d


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def import_capped(home: Path, bundle: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachemgr", "import", str(bundle), *args], cwd=REPO,
                          env=dict(BASE_ENV, CACHEMGR_HOME=str(home), **env), capture_output=True, text=True,
                          timeout=300, preexec_fn=_cap_memory)


def _blob_bomb(src: Src, out: Path) -> Path:
    """The manifest, consistently, says the largest file is 100 GiB; 100 GiB of zeros follow."""
    items = members(src.root / "mymul.tar.zst")
    doc, sha = inflate_largest_file(manifest_of(src.root / "mymul.tar.zst"), CLAIM)
    body = json.dumps(doc).encode()
    raw = [("manifest.json", len(body), body)] + [
        (name, CLAIM, Zeros(CLAIM)) if name == f"blobs/{sha}" else (name, size, data)
        for name, size, data in as_raw(items)[1:]]
    return write_raw_bundle(out, raw)


def _member_lies(src: Src, out: Path) -> Path:
    """The manifest is genuine; one blob's tar header claims 100 GiB, and they follow."""
    raw = as_raw(members(src.root / "mymul.tar.zst"))
    i = max(range(1, len(raw)), key=lambda k: raw[k][1])
    raw[i] = (raw[i][0], CLAIM, Zeros(CLAIM))
    return write_raw_bundle(out, raw)


def _bomb_after_end(src: Src, out: Path) -> Path:
    return write_raw_bundle(out, as_raw(members(src.root / "mymul.tar.zst")), after_end=Zeros(CLAIM))


def _too_many_entries(src: Src, out: Path) -> Path:
    items = members(src.root / "mymul.tar.zst")
    doc = with_many_entries(manifest_of(src.root / "mymul.tar.zst"), 100_001)
    return write_bundle(out, [(items[0][0], json.dumps(doc).encode())] + items[1:])


def _signature_of_another(src: Src, out: Path) -> Path:
    """mymul's genuine bundle, carrying the genuine signature of the text bundle's manifest."""
    items = members(src.root / "mymul.tar.zst")
    sig = next(m for m in members(src.root / "text-signed.tar.zst") if m[0].name == "manifest.json.sig")
    return write_bundle(out, [items[0], sig] + items[1:])


CASES: dict[str, tuple[Callable[[Src, Path], Path], tuple[str, ...], int, str]] = {
    "blob inflates to 100 GiB": (_blob_bomb, (), 9, "more than max_model_size"),
    "member claims 100 GiB": (_member_lies, (), 8, "but the bundle manifest says"),
    "zstd bomb after the tar": (_bomb_after_end, (), 20, "extra data after the end of the archive"),
    "over max_entries": (_too_many_entries, (), 9, "more than max_entries"),
    "signature over another manifest": (_signature_of_another, (), 22, "does not match the bundle manifest"),
    "signature over another manifest, trusted key": (_signature_of_another, ("--require-signature", "KEY"), 22,
                                                     "does not match the bundle manifest"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_bundle_is_refused_while_it_streams(case: str, src: Src, disk: SmallDisk, tmp_path: Path) -> None:
    build, args, code, needle = CASES[case]
    bundle = build(src, tmp_path / "hostile.tar.zst")
    assert bundle.stat().st_size < 16 * 1024 * 1024
    home = disk.home
    seed = Cli(home, src.env)
    assert seed("import", str(src.root / "mymul.tar.zst")).code == 0  # not empty: "unchanged" means something
    before = state(home)
    args = tuple(str(src.root / "k1.pub") if a == "KEY" else a for a in args)
    r = import_capped(home, bundle, *args)
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert state(home) == before
    assert os.listdir(home / "tmp") == [], "the refused bundle left temps behind"
    assert disk.outside_store() == []
    v = seed("verify", "--json")
    doc: dict[str, Any] = json.loads(v.out)
    assert v.code == 0 and doc["models"] == 1, v.out + v.err


def test_the_crafting_itself_imports_when_it_changes_nothing(src: Src, disk: SmallDisk, tmp_path: Path) -> None:
    """The control: the raw writer's bundle of the genuine members imports, under the same caps."""
    bundle = write_raw_bundle(tmp_path / "same.tar.zst", as_raw(members(src.root / "mymul.tar.zst")))
    r = import_capped(disk.home, bundle)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Cli(disk.home, src.env)("verify").code == 0


def test_the_operators_caps_apply_to_bundles(src: Src, disk: SmallDisk) -> None:
    """A genuine bundle over the configured max_model_size / max_entries is refused the same way."""
    for env, needle in (({"CACHEMGR_MAX_MODEL_SIZE": "1K"}, "more than max_model_size"),
                        ({"CACHEMGR_MAX_ENTRIES": "2"}, "more than max_entries")):
        r = import_capped(disk.home, src.root / "mymul.tar.zst", **env)
        assert r.returncode == 9 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (disk.home / "refs").is_dir() or os.listdir(disk.home / "refs") == []
        assert not (disk.home / "tmp").is_dir() or os.listdir(disk.home / "tmp") == []
    r = import_capped(disk.home, src.root / "mymul.tar.zst")
    assert r.returncode == 0, r.stderr
