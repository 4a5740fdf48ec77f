"""Pin records: GC roots that live in the store, so that every machine sharing it sees them.

``pins/<sha256(handle)>.json`` records who pinned which handle, when, why, until when, and
the manifest digest (plus upstream ETag / x-goog-hash) the handle had when pinned. A pin with
no digest is *wanted but missing*. Every write is a unique temp + atomic rename. What pins
mean (pinning, checking, prefetching) is ``cachemgr.lifecycle.pins``.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachemgr.errors import CachemgrError
from cachemgr.handles import parse_handle
from cachemgr.store.fs import atomic_write, disk_error
from cachemgr.store.objects import Store
from cachemgr.store.refs import RefIndex, key_of


@dataclass(frozen=True)
class Pin:
    handle: str
    asked: str
    digest: str | None
    who: str
    when: float
    reason: str = ""
    until: float | None = None
    etag: str | None = None
    x_goog_hash: str | None = None

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Pin:
        return Pin(**{k: v for k, v in doc.items() if k in Pin.__dataclass_fields__})


def who_am_i() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def pin_path(store: Store, handle: str) -> Path:
    return store.pins / f"{key_of(handle)}.json"


def read_pins(store: Store) -> list[Pin]:
    """Every pin in the store (one directory scan; unreadable files are skipped)."""
    out: list[Pin] = []
    try:
        entries = list(os.scandir(store.pins))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            with open(entry.path, "rb") as fh:
                out.append(Pin.from_json(json.loads(fh.read())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(out, key=lambda p: p.handle)


def write_pin(store: Store, pin: Pin) -> None:
    try:
        store.pins.mkdir(exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, store.pins) from None
    body = json.dumps(pin.to_json(), indent=1, sort_keys=True).encode() + b"\n"
    atomic_write(pin_path(store, pin.handle), body, store.tmp, fault=store.fault)


def canonical_of(store: Store, text: str) -> str:
    """The handle a pin on ``text`` is keyed by: the stored ref's, else the parsed canonical."""
    return RefIndex(store).canonical_for(text) or parse_handle(text).canonical


def find_pin(store: Store, text: str) -> Pin | None:
    candidates = [canonical_of(store, text), text]
    try:
        candidates.append(parse_handle(text).canonical)
    except CachemgrError:
        pass
    for handle in dict.fromkeys(candidates):
        try:
            return Pin.from_json(json.loads(pin_path(store, handle).read_bytes()))
        except (FileNotFoundError, ValueError, TypeError):
            continue
    return None
