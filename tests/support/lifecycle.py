"""The lifecycle tests' view of a store (pins, prune, verify, du): its handles, its tree, its consistency."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MYMUL = "https://tfhub.dev/google/mymul/1"
TEXT1 = "https://tfhub.dev/google/text-embed/1"
TEXT2 = "https://tfhub.dev/google/text-embed/2"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def tree_state(home: Path) -> list[tuple[str, int, str]]:
    """Every entry of the store (temps, last-use records, node records and leases excluded: the
    bookkeeping every command rewrites): path, size, link target."""
    out = []
    for root, dirs, files in os.walk(home):
        rel_root = os.path.relpath(root, home)
        if rel_root.split(os.sep)[0] in ("tmp", "uses", "nodes", "leases"):
            continue
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            st = os.lstat(p)
            target = os.readlink(p) if os.path.islink(p) else ""
            out.append((os.path.join(rel_root, name), st.st_size if not os.path.isdir(p) else 0, target))
    return sorted(out)


def blob_bytes(home: Path) -> int:
    root = home / "blobs" / "sha256"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def file_bytes(home: Path) -> int:
    """Bytes of all regular files in the store, each inode counted once (hard links share).

    Not counted: the node records and leases (nodes/, leases/), which every writing command
    rewrites, so their size moves by a byte or two whatever a prune frees."""
    seen: dict[tuple[int, int], int] = {}
    for root, dirs, files in os.walk(home):
        if root == str(home):
            dirs[:] = [d for d in dirs if d not in ("nodes", "leases")]
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if not os.path.islink(os.path.join(root, name)):
                seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def refs(home: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_bytes()) for p in sorted((home / "refs").glob("*.json"))]


def consistency_problems(home: Path) -> list[str]:
    """Every ref resolves to a correct manifest, present blobs and a complete snapshot;
    every view link points at an existing snapshot."""
    problems: list[str] = []
    for ref in refs(home):
        digest = str(ref["manifest"])
        mpath = home / "manifests" / "sha256" / f"{digest}.json"
        if not mpath.is_file():
            problems.append(f"{ref['handle']}: manifest {digest} missing")
            continue
        data = mpath.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{ref['handle']}: manifest {digest} corrupt")
        for path, _mode, size, blob in json.loads(data)["files"]:
            b = home / "blobs" / "sha256" / blob[:2] / blob
            if not b.is_file() or b.stat().st_size != size:
                problems.append(f"{ref['handle']}: blob {blob} of {path} missing")
            if not (home / "snapshots" / digest / path).is_file():
                problems.append(f"{ref['handle']}: snapshot file {path} missing")
    view = home / "view"
    for entry in view.iterdir() if view.is_dir() else []:
        if entry.is_symlink() and not entry.exists():
            problems.append(f"view link {entry.name} dangles (-> {os.readlink(entry)})")
    return problems
