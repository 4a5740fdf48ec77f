"""Structural checks of a SavedModel (or TF1 hub module) tree, from its file list alone."""

from __future__ import annotations

import re
from collections.abc import Iterable

from cachemgr.errors import ModelStructureError

ROOT_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "tfhub_module.pb")
_SHARD = re.compile(r"^variables/variables\.data-(\d{5})-of-(\d{5})$")


def check_structure(paths: Iterable[str], name: str) -> None:
    """Raise ModelStructureError unless ``paths`` form a complete SavedModel."""
    files = set(paths)
    if not any(m in files for m in ROOT_MARKERS):
        nested = sorted(p for p in files if p.rsplit("/", 1)[-1] in ROOT_MARKERS)
        hint = (
            f" (found {nested[0]}: repack so that its directory is the archive root)"
            if nested else ""
        )
        raise ModelStructureError(
            f"{name}: no saved_model.pb, saved_model.pbtxt or tfhub_module.pb at the archive "
            f"root{hint}; it is not a SavedModel"
        )
    var_files = {p for p in files if p.startswith("variables/")}
    if not var_files:
        return
    shards = [m for m in (_SHARD.match(p) for p in var_files) if m]
    if "variables/variables.index" not in files:
        raise ModelStructureError(
            f"{name}: variables/ has no variables.index; the archive is incomplete"
        )
    if not shards:
        raise ModelStructureError(
            f"{name}: variables/ has an index but no variables.data-* shard; "
            "the archive is incomplete"
        )
    totals = {int(m.group(2)) for m in shards}
    if len(totals) != 1:
        raise ModelStructureError(f"{name}: variables data shards disagree on their count")
    total = totals.pop()
    have = {int(m.group(1)) for m in shards}
    missing = [i for i in range(total) if i not in have]
    if missing:
        first = f"variables/variables.data-{missing[0]:05d}-of-{total:05d}"
        raise ModelStructureError(
            f"{name}: {len(missing)} of {total} variables data shard(s) missing, e.g. {first}; "
            "the archive is incomplete"
        )
