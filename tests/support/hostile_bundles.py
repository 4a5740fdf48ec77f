"""Bundles crafted to hurt, made from genuine ones: blobs that inflate to gigabytes, manifests past
the caps, a zstd bomb after the end of the tar, a signature taken from another bundle.

Members may carry ``Zeros`` (see ``hostile_archives``) instead of bytes, so a bundle that
claims 100 GiB is a few MiB of chained zstd frames, still with a correct end trailer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

from cachemgr.bundle.container import trailer

from .bundles import BundleMember
from .hostile_archives import BLOCK, Zeros, header, zstd_chain

GIB = 1024**3
Body = bytes | Zeros


def write_raw_bundle(path: Path, items: list[tuple[str, int, Body]], after_end: Zeros | None = None) -> Path:
    """A bundle whose members are ``(name, claimed size, body)``; the trailer is right."""
    parts: list[bytes | Zeros] = []
    for name, size, body in items:
        parts.append(header(name, tarfile.REGTYPE, size))
        if isinstance(body, Zeros):
            parts.append(Zeros(body.n + (-body.n % BLOCK)))
        else:
            parts.append(body + b"\0" * (-len(body) % BLOCK))
    parts.append(b"\0" * (20 * BLOCK))
    if after_end is not None:
        parts.append(after_end)
    comp = zstd_chain(parts)
    path.write_bytes(comp + trailer(len(comp)))
    return path


def as_raw(items: list[BundleMember]) -> list[tuple[str, int, Body]]:
    return [(info.name, len(body), body) for info, body in items]


def manifest_digest(mdoc: dict[str, Any]) -> str:
    canonical = {"format": mdoc["format"], "dirs": mdoc["dirs"], "files": mdoc["files"]}
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def inflate_largest_file(doc: dict[str, Any], size: int) -> tuple[dict[str, Any], str]:
    """The bundle manifest with its largest model file claiming ``size`` bytes, consistent
    everywhere (model manifest digest, refs, blob list); returns it and that blob's digest."""
    doc = copy.deepcopy(doc)
    old_digest, mdoc = max(doc["manifests"].items(), key=lambda kv: max(f[2] for f in kv[1]["files"]))
    row = max(mdoc["files"], key=lambda f: f[2])
    row[2] = size
    new_digest = manifest_digest(mdoc)
    doc["manifests"] = {(new_digest if d == old_digest else d): m for d, m in doc["manifests"].items()}
    for ref in doc["refs"]:
        if ref["manifest"] == old_digest:
            ref["manifest"] = new_digest
    for blob in doc["blobs"]:
        if blob["sha256"] == row[3]:
            blob["size"] = size
    return doc, str(row[3])


def with_many_entries(doc: dict[str, Any], count: int) -> dict[str, Any]:
    """The bundle manifest with ``count`` extra empty directories in its first model."""
    doc = copy.deepcopy(doc)
    old_digest, mdoc = next(iter(doc["manifests"].items()))
    mdoc["dirs"] = sorted(mdoc["dirs"] + [f"assets/d{i:06d}" for i in range(count)] + (
        [] if "assets" in mdoc["dirs"] else ["assets"]))
    new_digest = manifest_digest(mdoc)
    doc["manifests"] = {(new_digest if d == old_digest else d): m for d, m in doc["manifests"].items()}
    for ref in doc["refs"]:
        if ref["manifest"] == old_digest:
            ref["manifest"] = new_digest
    return doc
