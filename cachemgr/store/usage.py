"""Last-use records, kept by cachemgr itself (atime is useless on noatime and NFS mounts).

``uses/<sha1(alias)>.<node>`` is an empty file whose mtime is the last time a process on
``node`` (its node id, else the hostname) used the model under that alias. One file per node
means concurrent writers on many nodes never contend; a reader takes the newest mtime over
all nodes and aliases (prune ignores nodes silent for longer than ``node_timeout``).
Recording is one ``utime`` call (a create the first time), cheap enough for the shim's hit path.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from cachemgr.store.perms import FILE


def host_tag() -> str:
    """This host's name as it appears in temp, use and lock file names (no dots, no slashes)."""
    return socket.gethostname().replace(".", "_").replace("/", "_") or "host"


def hub_key(handle: str) -> str:
    """sha1 of the exact handle string (tensorflow_hub's cache key; kept here to stay stdlib-only)."""
    return hashlib.sha1(handle.encode("utf-8")).hexdigest()


def uses_dir(home: Path) -> Path:
    return home / "uses"


def tag_of(node_id: str | None) -> str:
    """How a node appears in file names: its id (dots and slashes replaced), else the hostname."""
    if not node_id:
        return host_tag()
    return node_id.replace(".", "_").replace("/", "_")


def record_use(home: Path, view_name: str, when: float | None = None, node: str | None = None) -> None:
    """Mark the model at ``view/<view_name>`` (a sha1 of an alias) as used now (or ``when``) by ``node``."""
    path = uses_dir(home) / f"{view_name}.{tag_of(node)}"
    times = None if when is None else (when, when)
    try:
        os.utime(path, times)
    except FileNotFoundError:
        _new_record(path, path, times)
    except PermissionError:  # another user's record (a shared store): ours replaces it, uses/ is the group's
        _new_record(path.with_name(f".{path.name}.{os.getpid()}"), path, times)
    except OSError:
        pass


def _new_record(made: Path, path: Path, times: tuple[float, float] | None) -> None:
    try:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(made, os.O_WRONLY | os.O_CREAT, FILE)
        os.fchmod(fd, FILE)  # readable by all whatever the umask (perms.py)
        os.close(fd)
        os.utime(made, times)
        if made != path:
            os.replace(made, path)
    except OSError:
        pass  # recording use must never break loading a model


def record_handle_use(home: Path, alias: str, when: float | None = None, node: str | None = None) -> None:
    record_use(home, hub_key(alias), when, node)


def uses_by_node(home: Path) -> dict[str, dict[str, float]]:
    """sha1(alias) -> {node tag: its newest use} (one directory scan)."""
    out: dict[str, dict[str, float]] = {}
    try:
        entries = os.scandir(uses_dir(home))
    except FileNotFoundError:
        return out
    with entries:
        for entry in entries:
            name, _, tag = entry.name.partition(".")
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            per = out.setdefault(name, {})
            per[tag] = max(per.get(tag, 0.0), mtime)
    return out


def last_uses(home: Path) -> dict[str, float]:
    """sha1(alias) -> newest use time over every node."""
    return {name: max(per.values()) for name, per in uses_by_node(home).items()}


def last_use_of(aliases: Iterable[str], uses: dict[str, float]) -> float | None:
    """The newest use of a model over all its aliases, or None if never used."""
    times = [uses[k] for k in (hub_key(a) for a in aliases) if k in uses]
    return max(times) if times else None
