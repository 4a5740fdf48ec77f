"""Node records: which nodes use a shared store, and when each was last heard from.

``nodes/<node_id>.json`` is written only by that node (so nodes never race to write one
name): by its daemon at every heartbeat, and by every command that changes the store. A node
silent for longer than ``node_timeout`` holds nothing back: its uses and leases no longer
protect anything from prune.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cachemgr.settings import Settings
from cachemgr.store.faults import Fault
from cachemgr.store.fs import atomic_write
from cachemgr.store.usage import tag_of

NODES = "nodes"
_MAX_NODE_BYTES = 4096


def nodes_dir(home: Path) -> Path:
    return home / NODES


@dataclass(frozen=True)
class NodeRecord:
    node: str
    host: str
    pid: int
    started: float
    heartbeat: float
    role: str  # "daemon" or "cli"

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode() + b"\n"

    @staticmethod
    def from_bytes(data: bytes) -> NodeRecord:
        """The one parser of node records (written by other hosts): ValueError unless well formed."""
        if len(data) > _MAX_NODE_BYTES:
            raise ValueError("node record too large")
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("node record is not an object")
        for key in ("node", "host", "role"):
            if not isinstance(doc.get(key), str):
                raise ValueError(f"node record lacks {key}")
        for key in ("started", "heartbeat"):
            if not isinstance(doc.get(key), int | float) or isinstance(doc.get(key), bool):
                raise ValueError(f"node record lacks {key}")
        if not isinstance(doc.get("pid"), int) or isinstance(doc.get("pid"), bool):
            raise ValueError("node record lacks pid")
        return NodeRecord(doc["node"], doc["host"], doc["pid"], float(doc["started"]),
                          float(doc["heartbeat"]), doc["role"])


def heartbeat(settings: Settings, role: str, started: float | None = None, now: float | None = None,
              fault: Fault | None = None) -> None:
    """Write this node's record (atomically; the daemon does it at every lease renewal).

    ``fault``: the crash tests' hook of the command's store (``store.fault``; faults.py).
    """
    home = settings.home
    now = time.time() if now is None else now
    record = NodeRecord(settings.node_id, socket.gethostname(), os.getpid(),
                        now if started is None else started, now, role)
    nodes_dir(home).mkdir(exist_ok=True)
    atomic_write(nodes_dir(home) / f"{tag_of(settings.node_id)}.json", record.to_bytes(), home / "tmp", fault=fault)


def announce(settings: Settings, role: str = "cli", fault: Fault | None = None) -> None:
    """A command that changes the store says this node is alive; never fails the command."""
    try:
        heartbeat(settings, role, fault=fault)
    except OSError:
        pass  # the command's own writes report a store that cannot be written


def read_nodes(home: Path) -> tuple[list[NodeRecord], list[str]]:
    """Every readable node record, and the names of the unreadable ones."""
    out: list[NodeRecord] = []
    bad: list[str] = []
    try:
        names = sorted(os.listdir(nodes_dir(home)))
    except FileNotFoundError:
        return out, bad
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            data = (nodes_dir(home) / name).read_bytes()
        except FileNotFoundError:
            continue
        except OSError:
            bad.append(name)
            continue
        try:
            out.append(NodeRecord.from_bytes(data))
        except ValueError:
            bad.append(name)
    return out, bad
