"""A stored model as a CNCF ModelPack artifact, and back (pure: bytes in, bytes out).

One OCI image manifest per model version (docs/oci.md):

- ``artifactType`` ``application/vnd.cncf.model.manifest.v1+json``, config
  ``application/vnd.cncf.model.config.v1+json`` (descriptor, config, modelfs with diffIds);
- one raw (uncompressed) layer per file, so a layer's digest is the store's blob sha256, with
  ``org.cncf.model.filepath``, ``org.opencontainers.image.title`` and
  ``org.cncf.model.file.metadata+json`` (its mode) as annotations;
- the manifest's annotations keep what the store needs to rebuild the model exactly: the
  cachemgr manifest digest, the handle, every alias, the directories and the provenance.

:func:`parse_artifact` turns registry or layout bytes back into a store manifest through the
one check every manifest passes (``store.manifest.parse_manifest``), with the digest the
artifact names: what it says must rebuild to exactly that manifest, or it is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cachemgr.errors import UnsafeManifestError
from cachemgr.store.manifest import FileEntry, Limits, Manifest, is_digest, parse_manifest
from cachemgr.store.refs import Ref

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
ANN_FILEPATH = "org.cncf.model.filepath"
ANN_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANN_TITLE = "org.opencontainers.image.title"
ANN_MANIFEST = "io.cachemgr.manifest"
ANN_HANDLE = "io.cachemgr.handle"
ANN_ALIASES = "io.cachemgr.aliases"
ANN_DIRS = "io.cachemgr.dirs"
ANN_SOURCE = "io.cachemgr.source"
DEFAULT_MODE = 0o644
MAX_CONFIG_BYTES = 16 << 20


def max_manifest_bytes(limits: Limits) -> int:
    """The cap on an artifact manifest read from anywhere: generous for max_entries layers."""
    return 64 * 1024 + 1024 * limits.max_entries


@dataclass(frozen=True)
class Artifact:
    """What to upload for one model: the config, the layers (blob digest, size), the manifest."""

    config: bytes
    manifest: bytes
    layers: tuple[tuple[str, int], ...]  # unique (sha256 hex, size), in layer order

    @property
    def config_digest(self) -> str:
        return _sha(self.config)

    @property
    def digest(self) -> str:
        return _sha(self.manifest)


@dataclass(frozen=True)
class Model:
    """An artifact read back: the store manifest (checked), and the ref data it carried."""

    manifest: Manifest
    handle: str
    aliases: tuple[str, ...]
    url: str
    etag: str | None
    x_goog_hash: str | None
    archive_size: int | None
    config_digest: str
    config_size: int


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _media_type(path: str) -> str:
    return WEIGHT_RAW if path.startswith("variables/") else WEIGHT_CONFIG_RAW


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def build_artifact(manifest: Manifest, ref: Ref) -> Artifact:
    """The ModelPack artifact of a stored model (deterministic: same model and ref, same bytes)."""
    files = sorted(manifest.files)
    diff_ids = [f"sha256:{f.sha256}" for f in files]
    config = _dumps({
        "descriptor": {"name": ref.handle, **({"sourceURL": ref.url} if ref.url.startswith("http") else {})},
        "config": {"format": "tensorflow-savedmodel"},
        "modelfs": {"type": "layers", "diffIds": diff_ids},
    })
    layers = []
    for f in files:
        meta = {"name": f.path, "mode": f.mode, "uid": 0, "gid": 0, "size": f.size,
                "mtime": "1970-01-01T00:00:00Z", "typeflag": 48}
        layers.append({
            "mediaType": _media_type(f.path), "digest": f"sha256:{f.sha256}", "size": f.size,
            "annotations": {ANN_FILEPATH: f.path, ANN_TITLE: f.path, ANN_FILE_METADATA: _dumps(meta).decode()},
        })
    source = {"url": ref.url, "etag": ref.etag, "x_goog_hash": ref.x_goog_hash, "archive_size": ref.archive_size}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{_sha(config)}", "size": len(config)},
        "layers": layers,
        "annotations": {
            ANN_TITLE: ref.handle,
            ANN_MANIFEST: f"sha256:{manifest.digest}",
            ANN_HANDLE: ref.handle,
            ANN_ALIASES: json.dumps(list(ref.aliases)),
            ANN_DIRS: json.dumps(list(manifest.dirs)),
            ANN_SOURCE: json.dumps(source, sort_keys=True),
        },
    }
    unique = tuple(dict.fromkeys((f.sha256, f.size) for f in files))
    return Artifact(config, json.dumps(doc, indent=1, sort_keys=True).encode(), unique)


def _hex(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("sha256:") or not is_digest(value[7:]):
        raise UnsafeManifestError(f"{where}: {what} digest {value!r} is not sha256:<64 hex digits>; refused")
    return value[7:]


def _size(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsafeManifestError(f"{where}: {what} size {value!r} is not a non-negative integer; refused")
    return value


def _strings(value: Any, what: str, where: str) -> list[str]:
    try:
        items = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise UnsafeManifestError(f"{where}: annotation {what} is not a JSON list of strings; refused")
    return items


def _mode(layer: dict[str, Any], annotations: dict[str, Any], where: str) -> int:
    raw = annotations.get(ANN_FILE_METADATA)
    if raw is None:
        return DEFAULT_MODE
    try:
        meta = json.loads(raw)
        mode = meta["mode"]
    except (ValueError, TypeError, KeyError):
        raise UnsafeManifestError(f"{where}: layer {layer.get('digest')} has unreadable file metadata; refused") \
            from None
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise UnsafeManifestError(f"{where}: layer {layer.get('digest')} has a mode that is not a number; refused")
    return mode


def _object(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsafeManifestError(f"{where}: {what} is not a JSON object; refused")
    return value


def parse_artifact(data: bytes, where: str, limits: Limits) -> Model:
    """Check artifact manifest bytes and rebuild the store manifest they describe (or refuse them)."""
    if len(data) > max_manifest_bytes(limits):
        raise UnsafeManifestError(f"{where}: the artifact manifest is larger than {max_manifest_bytes(limits)} "
                                  "bytes; refused")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise UnsafeManifestError(f"{where}: the artifact manifest is not JSON; refused") from None
    doc = _object(doc, "the artifact manifest", where)
    if doc.get("schemaVersion") != 2 or doc.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise UnsafeManifestError(f"{where}: not an OCI image manifest (schemaVersion 2, {OCI_MANIFEST}); refused")
    config = _object(doc.get("config"), "config", where)
    if doc.get("artifactType", config.get("mediaType")) != ARTIFACT_TYPE and config.get("mediaType") != CONFIG_TYPE:
        raise UnsafeManifestError(f"{where}: not a ModelPack model artifact (artifactType {ARTIFACT_TYPE}); "
                                  "push it with cachemgr push, refused")
    annotations = _object(doc.get("annotations", {}), "annotations", where)
    handle = annotations.get(ANN_HANDLE)
    if not isinstance(handle, str) or not handle:
        raise UnsafeManifestError(f"{where}: the artifact has no {ANN_HANDLE} annotation (the model's handle); "
                                  "push it with cachemgr push, refused")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise UnsafeManifestError(f"{where}: layers is not a list; refused")
    files = []
    for item in layers:
        layer = _object(item, "a layer", where)
        media = layer.get("mediaType")
        if not isinstance(media, str) or not (media.startswith("application/vnd.cncf.model.")
                                              and media.endswith(".v1.raw")):
            raise UnsafeManifestError(f"{where}: layer media type {media!r} is not supported (only ModelPack "
                                      "raw layers, one file each); refused")
        ann = _object(layer.get("annotations", {}), "layer annotations", where)
        path = ann.get(ANN_FILEPATH, ann.get(ANN_TITLE))
        if not isinstance(path, str):
            raise UnsafeManifestError(f"{where}: layer {layer.get('digest')} has no {ANN_FILEPATH}; refused")
        files.append(FileEntry(path, _mode(layer, ann, where), _size(layer.get("size"), "layer", where),
                               _hex(layer.get("digest"), "layer", where)))
    dirs = set(_strings(annotations[ANN_DIRS], ANN_DIRS, where)) if ANN_DIRS in annotations else set()
    digest = _hex(annotations[ANN_MANIFEST], ANN_MANIFEST, where) if ANN_MANIFEST in annotations else None
    try:
        rebuilt = Manifest.build(files, dirs)
    except TypeError:
        raise UnsafeManifestError(f"{where}: the layers do not describe a model tree; refused") from None
    if len({f.path for f in files}) != len(files):
        raise UnsafeManifestError(f"{where}: two layers have the same file path; refused")
    manifest = parse_manifest(rebuilt.to_bytes(), where, digest=digest, limits=limits)
    aliases = _strings(annotations[ANN_ALIASES], ANN_ALIASES, where) if ANN_ALIASES in annotations else [handle]
    source = annotations.get(ANN_SOURCE, "{}")
    try:
        src = json.loads(source) if isinstance(source, str) else None
    except ValueError:
        src = None
    src = _object(src, f"annotation {ANN_SOURCE}", where)
    url, etag, goog, size = (src.get(k) for k in ("url", "etag", "x_goog_hash", "archive_size"))
    if not all(v is None or isinstance(v, str) for v in (url, etag, goog)):
        raise UnsafeManifestError(f"{where}: annotation {ANN_SOURCE} has a non-string field; refused")
    return Model(manifest, handle, tuple(aliases), url or "", etag, goog,
                 None if size is None else _size(size, "archive", where),
                 _hex(config.get("digest"), "config", where), _size(config.get("size"), "config", where))


def check_config(data: bytes, where: str) -> None:
    """The config blob is a ModelPack config: a JSON object with descriptor, config and modelfs."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not {"descriptor", "config", "modelfs"} <= set(doc):
        raise UnsafeManifestError(f"{where}: the config is not a ModelPack config ({CONFIG_TYPE}); refused")
