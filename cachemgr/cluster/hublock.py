"""tensorflow_hub's own lock files in the view, so that plain hub clients wait for our fetch.

tensorflow_hub (resolver.atomic_download) treats ``TFHUB_CACHE_DIR/<sha1(handle)>.lock``,
holding ``host.pid.uuid``, as "another process is downloading this module": it polls every
5 s while the file exists, and steals it only when neither its text nor the size of
``<sha1>.<uuid>.tmp`` changed for 10 minutes. So while the lease holder fetches a model it
writes that lock for every spelling of the handle whose view entry is absent, rewrites it
with a fresh uuid at every lease renewal (hub sees progress), and removes it once the view
entry is published (or the fetch failed: then hub goes on by itself).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path

from cachemgr.store.fs import atomic_write, pid_alive, remove_quietly
from cachemgr.store.objects import Store
from cachemgr.store.perms import FILE


def hub_lock_text() -> str:
    """hub's format: ``host.pid.uuid`` (resolver._lock_file_contents)."""
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"


class HubLocks:
    """The hub lock files one fetch holds. Methods run in threads (they touch the store)."""

    def __init__(self, store: Store, aliases: Iterable[str]) -> None:
        self.store = store
        self.entries = [store.view_entry(a) for a in dict.fromkeys(aliases)]
        self.held: dict[Path, str] = {}

    def take(self) -> None:
        """Create the lock of each absent view entry that no one else has locked."""
        for entry in self.entries:
            lock = entry.with_name(entry.name + ".lock")
            if os.path.lexists(entry):
                continue
            text = hub_lock_text()
            if _dead_here(lock):
                remove_quietly(lock)  # left by a killed process of this host
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError:
                continue  # a hub client or another fetch has it: it waits for us, or we for it
            try:
                os.fchmod(fd, FILE)  # readable by every user of a shared store, whatever the umask (perms.py)
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            self.held[lock] = text

    def refresh(self) -> None:
        """New text in each lock we hold, so hub's 10-minute inactivity rule never fires."""
        for lock, old in list(self.held.items()):
            if not self._ours(lock, old):
                del self.held[lock]
                continue
            text = hub_lock_text()
            atomic_write(lock, text.encode(), self.store.tmp, fault=self.store.fault)
            self.held[lock] = text

    def release(self) -> None:
        """Remove the locks we still hold (never one a hub client took over)."""
        for lock, text in self.held.items():
            if self._ours(lock, text):
                try:
                    lock.unlink()
                except FileNotFoundError:
                    pass
        self.held.clear()

    @staticmethod
    def _ours(lock: Path, text: str) -> bool:
        try:
            return lock.read_text() == text
        except (OSError, UnicodeDecodeError):
            return False


def _dead_here(lock: Path) -> bool:
    """The lock names a process of this host that is gone."""
    try:
        host, pid, _uid = lock.read_text().rsplit(".", 2)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))
