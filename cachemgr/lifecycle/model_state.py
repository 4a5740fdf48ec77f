"""A model's state, as ``ls``, ``info`` and ``du`` show it: whether it can be served, and the fix.

``classify`` is pure: it turns what is known about a model's manifest, snapshot and blobs into
a :class:`ModelState`. ``states_of`` gathers those facts for some refs cheaply (a stat per
manifest and snapshot, one listing of the blobs); ``du`` classifies from its store scan.

- ``ok``: manifest, snapshot and every blob are present;
- ``out_of_service``: the snapshot is gone (``verify`` quarantined it, or it was lost), so
  nothing serves the model until a repair or a fresh pull;
- ``missing_manifest`` / ``corrupt_manifest``: the model's manifest is absent or unreadable;
- ``missing_blobs``: the snapshot serves, but blobs are gone (export and repair need them).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from cachemgr.errors import CachemgrError
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref

StateCode = Literal["ok", "out_of_service", "missing_manifest", "corrupt_manifest", "missing_blobs"]


@dataclass(frozen=True)
class ModelState:
    code: StateCode
    fix: str = ""  # one line for people: what is wrong and the command that mends it

    @property
    def ok(self) -> bool:
        return self.code == "ok"


def _fix(what: str, handle: str) -> str:
    return (f"{what}: run `cachemgr verify --repair` or `cachemgr pull --refresh {shlex.quote(handle)}`")


def classify(handle: str, *, manifest: bool, readable: bool, snapshot: bool, missing_blobs: int) -> ModelState:
    """The state of ``handle`` from what is known about its content. Pure."""
    if not manifest:
        return ModelState("missing_manifest", _fix("out of service, its manifest is missing", handle))
    if not readable:
        return ModelState("corrupt_manifest", _fix("out of service, its manifest is unreadable", handle))
    if not snapshot:
        return ModelState("out_of_service", _fix("out of service", handle))
    if missing_blobs:
        return ModelState("missing_blobs", _fix(f"{missing_blobs} blob(s) missing (it still loads; export and "
                                                "repair need them)", handle))
    return ModelState("ok")


def _blob_lister(store: Store, many: bool) -> Callable[[str], bool]:
    """Whether a blob is present: one listing of blobs/ for many models, a stat for one."""
    if not many:
        return store.has_blob
    return store.blob_names().__contains__


def states_of(store: Store, refs: Iterable[Ref]) -> dict[str, ModelState]:
    """handle -> state, for ``refs`` of ``store``."""
    refs = list(refs)
    present = _blob_lister(store, len(refs) > 1)
    out: dict[str, ModelState] = {}
    for ref in refs:
        path = store.manifest_path(ref.manifest)
        manifest = readable = True
        missing = 0
        try:
            digests = store.read_manifest(ref.manifest).blob_digests()
            missing = sum(1 for d in digests if not present(d))
        except CachemgrError:
            manifest = path.is_file()
            readable = False
        out[ref.handle] = classify(ref.handle, manifest=manifest, readable=readable,
                                   snapshot=store.snapshot_path(ref.manifest).is_dir(), missing_blobs=missing)
    return out
