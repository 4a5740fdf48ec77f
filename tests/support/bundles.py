"""Reading and writing bundles member by member, to build tampered or hostile ones from genuine ones."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import zstandard

from cachemgr.bundle.container import trailer

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
