"""Leases: who is doing a piece of work (a fetch, a prune) in a store shared by many nodes.

A lease is the file ``leases/<name>.lease`` holding its holder (node, host, pid), a token,
when it started and when it was last renewed. The rules are restic's and borg 2's:

- **take**: ``O_EXCL`` create of the lease file (the one create that is atomic on NFS,
  Lustre, GPFS and GlusterFS), then read it back: the token must be ours;
- **renew** at a third of ``lease_timeout`` (a thread, :class:`LeaseKeeper`): re-read first,
  and if the lease vanished or holds another token, it was taken over: the work is abandoned
  (:class:`~cachemgr.errors.LeaseLostError`);
- **stale**: not renewed for ``lease_timeout`` (by the record's renewal time and the file's
  mtime, whichever is newer), or held by a dead pid of this very node;
- **take over** a stale lease by renaming it aside to a unique name (of several nodes doing
  so at once, one rename succeeds) and then taking it as above.

A lease only avoids duplicate work. Nothing is correct because of it: every publish in the
store is a rename of finished content, and two nodes publishing the same model agree.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachemgr.errors import LeaseLostError, StoreError
from cachemgr.store.fs import atomic_write, disk_error, pid_alive, remove_quietly, unique_name
from cachemgr.store.perms import FILE

LEASES = "leases"
_MAX_LEASE_BYTES = 4096
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def leases_dir(home: Path) -> Path:
    return home / LEASES


def lease_path(home: Path, name: str) -> Path:
    if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
        raise ValueError(f"bad lease name {name!r}")
    return leases_dir(home) / f"{name}.lease"


@dataclass(frozen=True)
class LeaseRecord:
    """What a lease file says. Read from a store another host may have written: checked strictly."""

    name: str
    node: str
    host: str
    pid: int
    token: str
    started: float
    renewed: float
    what: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode() + b"\n"

    @staticmethod
    def from_bytes(data: bytes) -> LeaseRecord:
        """The one parser of lease files; ValueError for anything but a well-formed record."""
        if len(data) > _MAX_LEASE_BYTES:
            raise ValueError("lease record too large")
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("lease record is not an object")
        strings = ("name", "node", "host", "token", "what")
        numbers = ("started", "renewed")
        if not all(isinstance(doc.get(k), str) for k in strings):
            raise ValueError("lease record lacks a string field")
        if not all(isinstance(doc.get(k), int | float) and not isinstance(doc.get(k), bool) for k in numbers):
            raise ValueError("lease record lacks a time")
        if not isinstance(doc.get("pid"), int) or isinstance(doc.get("pid"), bool):
            raise ValueError("lease record lacks a pid")
        return LeaseRecord(doc["name"], doc["node"], doc["host"], doc["pid"], doc["token"],
                           float(doc["started"]), float(doc["renewed"]), doc["what"])


@dataclass(frozen=True)
class LeaseState:
    """A lease as a reader saw it (plain data: planning decides staleness from it)."""

    file: str
    record: LeaseRecord | None  # None: unreadable (being written, or garbage)
    mtime: float

    def expired(self, timeout: float, now: float) -> bool:
        """Not renewed for ``timeout`` (a half-written lease is live until its mtime says otherwise)."""
        return now - max(self.mtime, self.record.renewed if self.record else 0.0) > timeout


def read_lease(path: Path) -> LeaseState | None:
    """The lease at ``path``; None if there is none."""
    try:
        with open(path, "rb") as fh:
            mtime = os.fstat(fh.fileno()).st_mtime
            data = fh.read(_MAX_LEASE_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        record: LeaseRecord | None = LeaseRecord.from_bytes(data)
    except ValueError:
        record = None
    return LeaseState(path.name, record, mtime)


def is_stale(state: LeaseState, timeout: float, node: str, now: float | None = None) -> bool:
    """Expired, or held by a dead process of this very node (then no need to wait it out)."""
    now = time.time() if now is None else now
    if state.expired(timeout, now):
        return True
    rec = state.record
    if rec is not None and rec.node == node and rec.host == socket.gethostname():
        return rec.pid != os.getpid() and not pid_alive(rec.pid)
    return False


class Lease:
    """A lease this process holds. Use :class:`LeaseKeeper` to keep it renewed."""

    def __init__(self, home: Path, name: str, record: LeaseRecord, tmp: Path) -> None:
        self.home = home
        self.name = name
        self.path = lease_path(home, name)
        self.record = record
        self.tmp = tmp
        self.lost: str | None = None

    def renew(self, now: float | None = None) -> None:
        """Re-read, then rewrite with a new renewal time; LeaseLostError if it is no longer ours."""
        self.check_file()
        now = time.time() if now is None else now
        record = LeaseRecord(**{**self.record.__dict__, "renewed": now})
        try:
            atomic_write(self.path, record.to_bytes(), self.tmp)
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        self.record = record

    def check_file(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.lost = f"lease {self.name} vanished"
        else:
            try:
                token = LeaseRecord.from_bytes(data).token
            except ValueError:
                token = ""
            if token != self.record.token:
                self.lost = f"lease {self.name} was taken over by another node"
        if self.lost:
            raise LeaseLostError(f"{self.lost}; this run's work on it was abandoned (another node carries on)")

    def check(self) -> None:
        """Raise LeaseLostError if the keeper saw the lease lost, or it is not ours now."""
        if self.lost:
            raise LeaseLostError(f"{self.lost}; this run's work on it was abandoned (another node carries on)")
        self.check_file()

    def release(self) -> None:
        """Remove the lease if it is still ours (never someone else's)."""
        try:
            if LeaseRecord.from_bytes(self.path.read_bytes()).token == self.record.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def try_acquire(home: Path, name: str, *, node: str, timeout: float, what: str = "",
                now: float | None = None) -> Lease | None:
    """Take lease ``name`` if it is free or stale; None if a live holder has it."""
    path = lease_path(home, name)
    tmp = home / "tmp"
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, path.parent) from None
    for _attempt in range(3):
        state = read_lease(path)
        if state is not None:
            if not is_stale(state, timeout, node, now):
                return None
            _move_aside(path)
        stamp = time.time() if now is None else now
        record = LeaseRecord(name, node, socket.gethostname(), os.getpid(), uuid.uuid4().hex,
                             stamp, stamp, what)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another node took it between our look and our create
        except OSError as exc:
            raise disk_error(exc, path) from None
        try:
            os.fchmod(fd, FILE)  # readable by every user of a shared store, whatever the umask (perms.py)
            os.write(fd, record.to_bytes())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            remove_quietly(path)
            raise disk_error(exc, path) from None
        os.close(fd)
        lease = Lease(home, name, record, tmp)
        try:
            lease.check_file()  # re-check after creating (restic): a racing takeover wins
        except LeaseLostError:
            continue
        return lease
    return None


def _move_aside(path: Path) -> None:
    """Take a stale lease out of the way; of racing nodes one rename succeeds."""
    aside = path.with_name(f".{unique_name('stale')}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise disk_error(exc, path) from None
    remove_quietly(aside)


def all_leases(home: Path) -> list[LeaseState]:
    """Every lease in the store, stale or not (for prune planning and `cachemgr nodes`)."""
    out: list[LeaseState] = []
    try:
        names = sorted(os.listdir(leases_dir(home)))
    except FileNotFoundError:
        return out
    for name in names:
        if name.endswith(".lease") and not name.startswith("."):
            state = read_lease(leases_dir(home) / name)
            if state is not None:
                out.append(state)
    return out


class LeaseKeeper:
    """Renews a lease from a thread at a third of ``timeout`` until closed; releases it then.

    The thread never raises: a lost lease is recorded on the lease, and the holder's next
    :meth:`Lease.check` raises LeaseLostError. ``on_renew`` runs after each renewal (e.g. to
    refresh tensorflow_hub's lock file so hub clients see progress).
    """

    def __init__(self, lease: Lease, timeout: float, on_renew: Callable[[], Any] | None = None) -> None:
        self.lease = lease
        self.interval = max(timeout / 3.0, 0.05)
        self.on_renew = on_renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release the lease (blocks: call it from a thread on an event loop)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.lease.release()

    def __enter__(self) -> Lease:
        self.start()
        return self.lease

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.lease.renew()
            except (LeaseLostError, StoreError):
                if self.lease.lost is None:
                    self.lease.lost = f"lease {self.lease.name} could not be renewed"
                return
            if self.on_renew is not None:
                try:
                    self.on_renew()
                except OSError:
                    pass
