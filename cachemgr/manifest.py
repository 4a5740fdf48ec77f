"""Manifests: the content of one model version as (path, mode, size, sha256) records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import StoreError

MANIFEST_FORMAT = 1


@dataclass(frozen=True, order=True)
class FileEntry:
    path: str
    mode: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    dirs: tuple[str, ...]

    @staticmethod
    def build(files: list[FileEntry], dirs: set[str]) -> Manifest:
        parents = {p for f in files for p in _parents(f.path)}
        return Manifest(tuple(sorted(files)), tuple(sorted(dirs | parents)))

    def to_bytes(self) -> bytes:
        """Canonical JSON: the manifest's digest is the sha256 of exactly these bytes."""
        doc = {
            "format": MANIFEST_FORMAT,
            "dirs": list(self.dirs),
            "files": [[f.path, f.mode, f.size, f.sha256] for f in self.files],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def blob_digests(self) -> set[str]:
        return {f.sha256 for f in self.files}

    @staticmethod
    def from_bytes(data: bytes, where: str = "manifest") -> Manifest:
        try:
            doc: dict[str, Any] = json.loads(data)
            if doc.get("format") != MANIFEST_FORMAT:
                raise StoreError(
                    f"{where}: manifest format {doc.get('format')!r} is not supported; "
                    "upgrade cachemgr"
                )
            files = tuple(FileEntry(str(p), int(m), int(s), str(h)) for p, m, s, h in doc["files"])
            return Manifest(files, tuple(str(d) for d in doc["dirs"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{where}: manifest is corrupt ({exc}); run cachemgr verify") from None


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
