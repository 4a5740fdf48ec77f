"""The bundle manifest (the first tar member, ``manifest.json``) and the inventory document.

The bundle manifest always describes the complete desired state: every ref (with all its
aliases and provenance), every model manifest (the documents themselves, keyed by digest),
and every blob those need, each marked ``packed`` when its bytes follow in the tar. A delta
packs fewer blobs but describes the same state, so deltas import in any order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cachemgr.errors import BundleError, BundleFormatError, BundleIntegrityError, NotABundleError
from cachemgr.store.manifest import Limits, Manifest, is_digest
from cachemgr.store.refs import Ref

FORMAT = 1
KIND = "cachemgr-bundle"
INVENTORY_KIND = "cachemgr-inventory"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.json.sig"
BLOB_PREFIX = "blobs/"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_SIGNATURE_BYTES = 64 * 1024


@dataclass(frozen=True)
class BlobEntry:
    sha256: str
    size: int
    packed: bool

    @property
    def member(self) -> str:
        return BLOB_PREFIX + self.sha256


@dataclass(frozen=True)
class BundleManifest:
    created: float
    tool: str
    refs: tuple[Ref, ...]
    manifests: dict[str, Manifest]
    blobs: tuple[BlobEntry, ...]
    # The pins carried by `export --with-pins`; None = not carried.
    pins: list[dict[str, Any]] | None = None
    # Describes the inventory a delta was made against (None for a full bundle).
    base: dict[str, Any] | None = field(default=None)

    @property
    def packed(self) -> tuple[BlobEntry, ...]:
        return tuple(b for b in self.blobs if b.packed)

    @property
    def packed_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.packed)

    def to_bytes(self) -> bytes:
        doc = {
            "kind": KIND,
            "format": FORMAT,
            "created": self.created,
            "tool": self.tool,
            "refs": [r.to_json() for r in self.refs],
            "manifests": {d: json.loads(m.to_bytes()) for d, m in sorted(self.manifests.items())},
            "blobs": [{"sha256": b.sha256, "size": b.size, "packed": b.packed} for b in self.blobs],
            "pins": self.pins,
            "base": self.base,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @staticmethod
    def from_bytes(data: bytes, where: str, limits: Limits | None = None) -> BundleManifest:
        """Parse and check the manifest for internal consistency (digests, blob list, paths).

        Every model manifest in it goes through the one manifest check (``parse_manifest``),
        with ``limits``: the size and entry caps an archive of the same model would meet.
        """
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise NotABundleError(f"{where} is not a cachemgr bundle (its manifest is not JSON); "
                                  "give a file written by cachemgr export") from None
        except RecursionError:  # e.g. 1000 nested "[": no manifest cachemgr writes nests deeper than 6
            raise NotABundleError(f"{where} is not a cachemgr bundle (its manifest nests too deeply); "
                                  "give a file written by cachemgr export") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise NotABundleError(f"{where} is not a cachemgr bundle; give a file written by cachemgr export")
        version = doc.get("format")
        if not isinstance(version, int) or version < 1:
            raise BundleError(f"{where}: bundle manifest has no valid format version; export it again")
        if version > FORMAT:
            raise BundleFormatError(f"{where} has bundle format {version}, newer than this cachemgr "
                                    f"understands ({FORMAT}); upgrade cachemgr on this side")
        try:
            return _parse(doc, where, limits)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
            raise BundleError(f"{where}: bundle manifest is malformed ({type(exc).__name__}: {exc}); "
                              "export it again") from None


def _parse(doc: dict[str, Any], where: str, limits: Limits | None) -> BundleManifest:
    manifests: dict[str, Manifest] = {}
    for digest, mdoc in doc["manifests"].items():
        manifest = Manifest.from_bytes(json.dumps(mdoc).encode(), f"{where}: manifest {digest}", limits)
        if manifest.digest != digest:
            raise BundleIntegrityError(f"{where}: model manifest {digest} does not match its digest "
                                       f"(it hashes to {manifest.digest}); the bundle was tampered with")
        manifests[digest] = manifest
    refs = tuple(Ref.from_json(r) for r in doc["refs"])
    for ref in refs:
        if not all(isinstance(a, str) and a for a in ref.aliases):
            raise BundleError(f"{where}: ref {ref.handle!r} has an invalid alias; export it again")
        if not isinstance(ref.handle, str) or not ref.handle or ref.manifest not in manifests:
            raise BundleError(f"{where}: ref {ref.handle!r} names manifest {ref.manifest!r}, which the "
                              "bundle does not carry; export it again")
    if len({r.handle for r in refs}) != len(refs):
        raise BundleError(f"{where}: a handle is listed twice; export it again")
    blobs = tuple(BlobEntry(str(b["sha256"]), int(b["size"]), bool(b["packed"])) for b in doc["blobs"])
    sizes: dict[str, int] = {}
    for b in blobs:
        if not is_digest(b.sha256) or b.size < 0 or b.sha256 in sizes:
            raise BundleError(f"{where}: blob entry {b.sha256!r} is invalid or listed twice; export it again")
        sizes[b.sha256] = b.size
    needed: dict[str, int] = {}
    for manifest in manifests.values():
        for f in manifest.files:
            needed[f.sha256] = f.size
    if needed != sizes:
        diff = sorted(set(needed.items()) ^ set(sizes.items()))
        raise BundleError(f"{where}: the blob list disagrees with the model manifests (e.g. blob "
                          f"{diff[0][0]}); the bundle was tampered with; export it again")
    pins = doc.get("pins")
    base = doc.get("base")
    return BundleManifest(
        created=float(doc["created"]), tool=str(doc["tool"]), refs=refs, manifests=manifests,
        blobs=blobs, pins=list(pins) if isinstance(pins, list) else None,
        base=dict(base) if isinstance(base, dict) else None,
    )


# -- inventory (what the receiving side holds) -------------------------------------------
@dataclass(frozen=True)
class Inventory:
    created: float
    manifests: frozenset[str]
    blobs: frozenset[str]

    def to_bytes(self) -> bytes:
        doc = {"kind": INVENTORY_KIND, "format": FORMAT, "created": self.created,
               "manifests": sorted(self.manifests), "blobs": sorted(self.blobs)}
        return json.dumps(doc, indent=0).encode() + b"\n"

    @staticmethod
    def from_bytes(data: bytes, where: str) -> Inventory:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("kind") != INVENTORY_KIND:
                raise ValueError("not a cachemgr inventory")
            if int(doc["format"]) > FORMAT:
                raise BundleFormatError(f"{where}: inventory format {doc['format']} is newer than this "
                                        "cachemgr understands; upgrade cachemgr on this side")
            blobs = frozenset(str(b) for b in doc["blobs"])
            manifests = frozenset(str(m) for m in doc["manifests"])
            if not all(is_digest(x) for x in blobs | manifests):
                raise ValueError("a digest is malformed")
            return Inventory(float(doc["created"]), manifests, blobs)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{where} is not a usable inventory ({exc}); make it with "
                              "`cachemgr inventory -o FILE` on the receiving side") from None
