"""Manifests: the content of one model version as (path, mode, size, sha256) records.

Every manifest that enters the process, whatever its source (an upstream daemon, a
bundle, a registry, a layout, or the store itself, which another host may have written),
is parsed by :func:`parse_manifest` and so passes :func:`check_manifest`: the same rules an
archive's members pass in ``ingest``. Nothing is written before that check.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cachemgr.errors import StoreError, UnsafeManifestError
from cachemgr.settings import Settings
from cachemgr.store.savedmodel import check_structure

MANIFEST_FORMAT = 1
MAX_MODE = 0o777  # permission bits only: no setuid, setgid, sticky or file-type bits
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def is_digest(text: object) -> bool:
    """A sha256 digest in lower-case hex: the only form a blob or manifest name may take."""
    return isinstance(text, str) and _DIGEST.match(text) is not None


@dataclass(frozen=True)
class Limits:
    """The bomb caps: unpacked bytes and entries of one model."""

    max_bytes: int
    max_entries: int

    @staticmethod
    def of(settings: Settings) -> Limits:
        """The caps ``max_model_size`` and ``max_entries`` set."""
        return Limits(settings.max_model_bytes, settings.max_entries)


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
        # every parent of a file or directory is listed: materialize makes them in order, one mkdir each
        parents = {p for path in [*(f.path for f in files), *dirs] for p in _parents(path)}
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
    def from_bytes(data: bytes, where: str = "manifest", limits: Limits | None = None) -> Manifest:
        return parse_manifest(data, where, limits=limits)


def parse_manifest(data: bytes, where: str, *, digest: str | None = None, limits: Limits | None = None) -> Manifest:
    """Parse manifest bytes from any source and check them (:func:`check_manifest`).

    ``digest``, when given, is the name the source used for these bytes: the canonical
    form of what was parsed must hash to it, so that the store files it under that name.
    """
    try:
        doc: Any = json.loads(data)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        if doc.get("format") != MANIFEST_FORMAT:
            raise StoreError(
                f"{where}: manifest format {doc.get('format')!r} is not supported; upgrade cachemgr"
            )
        files = tuple(_file_entry(row) for row in doc["files"])
        dirs = tuple(_text(d) for d in doc["dirs"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise StoreError(f"{where}: manifest is corrupt ({detail}); run cachemgr verify") from None
    manifest = Manifest(files, dirs)
    if digest is not None and manifest.digest != digest:
        raise UnsafeManifestError(f"{where}: the manifest's canonical form hashes to {manifest.digest}, not "
                                  f"to {digest}; the source is corrupt or hostile, refused")
    check_manifest(manifest, where, limits)
    return manifest


def check_manifest(manifest: Manifest, where: str, limits: Limits | None = None) -> None:
    """Refuse a manifest that an archive with the same members would be refused for.

    Paths are relative, normalised and inside the tree; no path is both a file and a
    directory or listed twice; every file's parent directories are listed; modes are
    permission bits; sizes are non-negative and one blob has one size; the tree is a
    SavedModel; and, with ``limits``, the size and entry caps hold.
    """
    dirs = set(manifest.dirs)
    for d in manifest.dirs:
        check_member_path(d, where, "directory")
    if len(dirs) != len(manifest.dirs):
        raise UnsafeManifestError(f"{where}: a directory is listed twice; refused")
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    for f in manifest.files:
        check_member_path(f.path, where, "file")
        if f.path in seen:
            raise UnsafeManifestError(f"{where}: file {f.path!r} is listed twice; refused")
        if f.path in dirs:
            raise UnsafeManifestError(f"{where}: {f.path!r} is both a file and a directory; refused")
        seen.add(f.path)
        missing = [p for p in _parents(f.path) if p not in dirs]
        if missing:
            raise UnsafeManifestError(f"{where}: file {f.path!r} lies in {missing[0]!r}, which is not listed "
                                      "as a directory; refused")
        if not 0 < f.mode <= MAX_MODE:
            raise UnsafeManifestError(f"{where}: file {f.path!r} has mode {f.mode:#o}; only permission bits "
                                      "are allowed; refused")
        if not is_digest(f.sha256) or f.size < 0:
            raise UnsafeManifestError(f"{where}: file {f.path!r} has an invalid digest or size; refused")
        if sizes.setdefault(f.sha256, f.size) != f.size:
            raise UnsafeManifestError(f"{where}: blob {f.sha256} is listed with two sizes; refused")
    if limits is not None:
        entries = len(manifest.files) + len(manifest.dirs)
        if entries > limits.max_entries:
            raise UnsafeManifestError(f"{where}: {entries} entries, more than max_entries ({limits.max_entries}); "
                                      "refused (raise max_entries / CACHEMGR_MAX_ENTRIES if it is genuine)")
        if manifest.size > limits.max_bytes:
            raise UnsafeManifestError(f"{where}: {manifest.size} bytes, more than max_model_size "
                                      f"({limits.max_bytes}); refused (raise max_model_size / "
                                      "CACHEMGR_MAX_MODEL_SIZE if it is genuine)")
    check_structure(seen, where)


def check_member_path(path: str, where: str, what: str) -> None:
    """A manifest path must already be normal: relative, no empty, ``.`` or ``..`` part, no NUL."""
    parts = path.split("/")
    if (not path or "\x00" in path or "\\" in path or path.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise UnsafeManifestError(f"{where}: {what} {path!r} is not a normal relative path inside the model; "
                                  "refused")


def _file_entry(row: Any) -> FileEntry:
    if not isinstance(row, list) or len(row) != 4:
        raise TypeError(f"file entry {row!r} is not [path, mode, size, sha256]")
    path, mode, size, sha = row
    return FileEntry(_text(path), _integer(mode), _integer(size), _text(sha))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
