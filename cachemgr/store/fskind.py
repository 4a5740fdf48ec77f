"""How long the filesystem under a store may show a node stale names and attributes.

A network filesystem's client caches lookups and attributes: on GlusterFS's FUSE client a
name another node renamed away still "exists", and a link count another node raised still
reads low, for up to its entry and attribute timeouts (1 s by default; measured on the test
bed). NFS caches attributes for ``actimeo`` (up to 60 s by default). Lustre, GPFS and
CephFS keep clients coherent, and a local disk has one client. A prune that renames content
into its trash looks again once every node's cache has caught up (``prune_exec``): this is
how long that is. The ``fs_cache_timeout`` setting overrides the guess.
"""

from __future__ import annotations

import os
from pathlib import Path

# Coherent between clients, or local: no node sees stale metadata.
_COHERENT = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "ramfs", "overlay", "f2fs", "jfs",
    "reiserfs", "bcachefs", "lustre", "gpfs", "ceph", "fuse.ceph-fuse", "beegfs",
})
_STALE_FOR = {"nfs": 60.0, "nfs4": 60.0, "fuse.glusterfs": 1.0, "cifs": 1.0, "smb3": 1.0}
_UNKNOWN = 1.0  # an unlisted filesystem may be a network one: a short wait costs little


def fs_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/self/mountinfo), or None."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, line.split(" - ", 1)[1].split()[0]
    return kind


def cache_timeout(path: Path, mountinfo: str | None = None) -> float:
    """Seconds a client of ``path``'s filesystem may see stale metadata (0: none)."""
    kind = fs_type(path, mountinfo)
    if kind is None:
        return _UNKNOWN
    if kind in _COHERENT:
        return 0.0
    return _STALE_FOR.get(kind, _UNKNOWN)


def stale_for(configured: float | None, home: Path) -> float:
    """The ``fs_cache_timeout`` setting, or the guess for ``home``'s filesystem when unset."""
    return configured if configured is not None else cache_timeout(home)
