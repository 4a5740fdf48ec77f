"""Refs: handle -> manifest digest with provenance, and the alias index.

``refs/<sha256(handle)>.json`` holds one record per model (its canonical handle).
``aliases/<sha256(alias)>`` holds the canonical handle for every alias string, so that
any form of a handle (including Kaggle URLs learned from a redirect chain) finds the ref.
Both are written by unique temp + rename; the last writer wins.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cachemgr.errors import HandleError, NotCachedError, StoreError
from cachemgr.handles import Handle, parse_handle
from cachemgr.store.fs import atomic_write
from cachemgr.store.manifest import is_digest
from cachemgr.store.objects import Store


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Ref:
    handle: str
    manifest: str
    aliases: tuple[str, ...]
    size: int
    files: int
    source: str = "pull"
    asked: str = ""
    url: str = ""
    fetched_at: float = 0.0
    etag: str | None = None
    x_goog_hash: str | None = None
    archive_size: int | None = None
    learned: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["aliases"] = list(self.aliases)
        doc["learned"] = list(self.learned)
        return doc

    @staticmethod
    def from_json(doc: Any) -> Ref:
        """The one parser of ref JSON, from this store, a shared store another host wrote, or a
        bundle: every field is type-checked; TypeError or ValueError if one is wrong."""
        if not isinstance(doc, dict):
            raise TypeError("a ref is a JSON object")
        handle, manifest = doc.get("handle"), doc.get("manifest")
        if not isinstance(handle, str) or not handle:
            raise ValueError(f"invalid handle {handle!r}")
        if not is_digest(manifest):
            raise ValueError(f"invalid manifest digest {manifest!r}")
        out: dict[str, Any] = {"handle": handle, "manifest": manifest}
        for name in ("aliases", "learned"):
            items = doc.get(name, [])
            if not isinstance(items, list | tuple) or not all(isinstance(a, str) and a for a in items):
                raise ValueError(f"{name} must be a list of strings")
            out[name] = tuple(items)
        for name in ("size", "files"):
            out[name] = _count(doc.get(name, 0), name)
        for name in ("source", "asked", "url"):
            value = doc.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            out[name] = value
        when = doc.get("fetched_at", 0.0)
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise ValueError("fetched_at must be a number")
        out["fetched_at"] = float(when)
        for name in ("etag", "x_goog_hash"):
            value = doc.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null")
            out[name] = value
        size = doc.get("archive_size")
        out["archive_size"] = None if size is None else _count(size, "archive_size")
        return Ref(**out)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


class RefIndex:
    """Reads and writes refs and aliases of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def ref_path(self, handle: str) -> Path:
        return self.store.refs / f"{key_of(handle)}.json"

    def write(self, ref: Ref) -> None:
        body = json.dumps(ref.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self.ref_path(ref.handle), body, self.store.tmp, fault=self.store.fault)
        self.write_aliases(ref)

    def write_aliases(self, ref: Ref) -> None:
        """Point each of ``ref``'s aliases at its handle in the alias index (where not already)."""
        for alias in ref.aliases:
            path = self.store.aliases / key_of(alias)
            try:
                if path.read_text() == ref.handle:
                    continue
            except FileNotFoundError:
                pass
            atomic_write(path, ref.handle.encode(), self.store.tmp, fault=self.store.fault)

    def read(self, handle: str) -> Ref | None:
        path = self.ref_path(handle)
        try:
            return Ref.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise StoreError(f"ref {path} is corrupt ({exc}); re-pull the model") from None

    def canonical_for(self, text: str) -> str | None:
        """The canonical handle stored for any alias string ``text``."""
        candidates = [text]
        try:
            candidates.append(parse_handle(text).canonical)
        except HandleError:  # an unparsable string can still be a stored alias
            pass
        for cand in candidates:
            if self.ref_path(cand).exists():
                return cand
            try:
                return (self.store.aliases / key_of(cand)).read_text()
            except FileNotFoundError:
                continue
        return None

    def lookup(self, text: str) -> Ref | None:
        canonical = self.canonical_for(text)
        return self.read(canonical) if canonical else None

    def require(self, text: str) -> Ref:
        """The ref for ``text``; HandleError if it is not a handle at all, NotCachedError if not stored."""
        parse_handle(text)
        ref = self.lookup(text)
        if ref is None:
            raise NotCachedError(
                f"{text} is not in the store; run `cachemgr pull {shlex.quote(text)}` "
                "(or `cachemgr import` a bundle that contains it)"
            )
        return ref

    def all(self) -> list[Ref]:
        out = []
        for path in sorted(self.store.refs.glob("*.json")):
            try:
                out.append(Ref.from_json(json.loads(path.read_bytes())))
            except (ValueError, TypeError, FileNotFoundError):
                continue
        return sorted(out, key=lambda r: r.handle)


def merged_aliases(handle: Handle, learned: list[Handle], previous: Ref | None) -> tuple[str, ...]:
    names: list[str] = list(handle.aliases())
    for other in learned:
        names += other.aliases()
    if previous is not None:
        names += previous.aliases
    return tuple(dict.fromkeys(names))


def with_aliases(ref: Ref, aliases: tuple[str, ...]) -> Ref:
    return replace(ref, aliases=tuple(dict.fromkeys(ref.aliases + aliases)))
