"""Reading and writing bundles member by member, to build tampered or hostile ones from genuine ones."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import zstandard

from cachemgr.bundle.container import trailer
from tests.support.env import REPO

# One tar member of a bundle: its header and its body.
BundleMember = tuple[tarfile.TarInfo, bytes]


def members(bundle: Path) -> list[BundleMember]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(bundle.read_bytes())
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            fh = tar.extractfile(info)
            assert fh is not None
            out.append((info, fh.read()))
    return out


def write_bundle(path: Path, items: list[BundleMember]) -> Path:
    """A well-formed bundle (tar, zstd frame, end trailer) with exactly ``items``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, body in items:
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    comp = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw.getvalue())
    path.write_bytes(comp + trailer(len(comp)))
    return path


def manifest_of(bundle: Path) -> dict[str, object]:
    info, body = members(bundle)[0]
    assert info.name == "manifest.json"
    doc: dict[str, object] = json.loads(body)
    return doc


# -- tampering: each changes one thing of a genuine bundle's members --------------------------
def flip_blob(items: list[BundleMember]) -> list[BundleMember]:
    i = max(range(1, len(items)), key=lambda k: len(items[k][1]))
    body = bytearray(items[i][1])
    body[len(body) // 2] ^= 0x01
    return items[:i] + [(items[i][0], bytes(body))] + items[i + 1:]


def extra_member(items: list[BundleMember]) -> list[BundleMember]:
    info = tarfile.TarInfo("blobs/" + hashlib.sha256(b"extra").hexdigest())
    return items + [(info, b"extra")]


def newer_format(items: list[BundleMember]) -> list[BundleMember]:
    doc = json.loads(items[0][1])
    doc["format"] = 2
    return [(items[0][0], json.dumps(doc).encode())] + items[1:]


# -- a store before and after an import --------------------------------------------------------
def tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def state(home: Path) -> dict[str, object]:
    """Everything a failed import must leave as it was (blobs may gain verified ones)."""
    out: dict[str, object] = {}
    for sub in ("refs", "aliases", "manifests/sha256", "snapshots"):
        d = home / sub
        out[sub] = sorted(os.listdir(d)) if d.is_dir() else []
    view = home / "view"
    out["view"] = sorted((n, os.readlink(view / n) if (view / n).is_symlink() else "")
                         for n in os.listdir(view)) if view.is_dir() else []
    out["ref_bodies"] = sorted(p.read_text() for p in (home / "refs").glob("*.json")) if (
        home / "refs").is_dir() else []
    return out


def assert_unchanged(home: Path, before: dict[str, object]) -> None:
    assert state(home) == before
    tmp = home / "tmp"
    assert not tmp.is_dir() or not list(tmp.iterdir()), "a failed import left temps behind"


def run_offline(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "-n", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
