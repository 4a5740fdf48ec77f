"""Watching the store with watchdog: adoption, stale hub leftovers, and the prefetch list.

inotify does not see changes made by other NFS clients, so everything the events do is
also done by a periodic sweep.

The event loop touches no file here: each check is a store call (``state.io``, reported when
stuck); the long jobs (adopting a download, prune, a scrub slice) are store jobs
(``state.io.job``): threads of their own, reported in ``/v1/health`` and ``cachemgr status``
when one gets no CPU time for ``stuck_io_after`` (hung on the store's mount), not merely for
running long, and never joined by a stopping daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import tomllib
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from cachemgr.errors import CachemgrError
from cachemgr.handles import parse_handle
from cachemgr.ingest.publish import record_model
from cachemgr.ingest.unpack import ingest_directory
from cachemgr.lifecycle.pins import wanted_handles
from cachemgr.lifecycle.prune_exec import auto_prune
from cachemgr.lifecycle.scrub import scrub
from cachemgr.store.fs import pid_alive, remove_quietly, unique_name
from cachemgr.store.manifest import Limits
from cachemgrd.state import DaemonState

log = logging.getLogger("cachemgrd.watch")
HUB_LOCK_TIMEOUT = 600.0  # tensorflow_hub's own rule: 10 min without progress
PRUNE_EVERY = 300.0  # seconds between automatic prunes (only when a prune_* watermark is set)
SCRUB_EVERY = 900.0  # seconds between background scrub slices (only when scrub_rate is set)


class _Forward(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        self.loop = loop
        self.callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE):
            return  # a read changes nothing, and checking a lock reads it: no event loop of our own
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.loop.call_soon_threadsafe(self.callback, os.fsdecode(path))


def descriptor_handle(view: Path, name: str) -> str | None:
    """The handle tensorflow_hub recorded in ``<name>.descriptor.txt``."""
    try:
        text = (view / f"{name}.descriptor.txt").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Module: "):
            return line.removeprefix("Module: ").strip()
    return None


def scan_view(view: Path) -> tuple[list[str], list[str]]:
    """(hub lock files, real directories named like hub entries) in the view, in one readdir.

    The view holds a link per alias (hundreds of thousands on a big store); the entry types
    come from readdir, so no entry is stat'ed. Runs in a thread.
    """
    locks: list[str] = []
    dirs: list[str] = []
    try:
        with os.scandir(view) as entries:
            for entry in entries:
                if entry.name.endswith(".lock"):
                    locks.append(entry.name)
                elif len(entry.name) == 40 and entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
    except FileNotFoundError:
        pass
    return locks, dirs


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class Watcher:
    def __init__(self, state: DaemonState, sweep_interval: float = 30.0) -> None:
        self.state = state
        self.sweep_interval = sweep_interval
        self.observer: Any = None
        self._pending: set[str] = set()
        self._checking: set[str] = set()
        self._lock_seen: dict[str, tuple[str, int, float]] = {}
        self._prefetched: set[str] = set()
        self._prefetch_mtime = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self._last_prune = -PRUNE_EVERY
        self._last_scrub = -SCRUB_EVERY

    @property
    def view(self) -> Path:
        return self.state.store.view

    def start(self) -> None:
        """Start watching (in a store thread: inotify_add_watch looks the paths up) and sweeping."""
        self._sweeper = self.state.spawn(self._start_and_sweep())

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        observer = Observer()
        observer.schedule(_Forward(loop, self._event), str(self.view), recursive=False)
        prefetch_dir = self.state.settings.prefetch_path.parent
        prefetch_dir.mkdir(parents=True, exist_ok=True)
        observer.schedule(_Forward(loop, self._event), str(prefetch_dir), recursive=False)
        observer.daemon = True
        observer.start()
        self.observer = observer

    async def _start_and_sweep(self) -> None:
        try:
            await self.state.io.run(self._watch, asyncio.get_running_loop(), what="watch the view")
        except OSError as err:  # the sweep still finds what events would have
            log.error("cannot watch %s: %s; relying on the periodic sweep", self.view, err)
        await self._sweep_forever()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)

    # -- events ----------------------------------------------------------------------------
    def _event(self, path: str) -> None:
        p = Path(path)
        if p == self.state.settings.prefetch_path:
            self.state.spawn(self.check_prefetch())
            return
        if p.parent != self.view:
            return
        if p.name.endswith(".lock"):
            if p.name not in self._checking:  # one check at a time per lock
                self._checking.add(p.name)
                self.state.spawn(self._check_lock(p.name))
            return
        name = p.name.split(".", 1)[0]
        if len(name) == 40 and name not in self._pending:
            self._pending.add(name)
            self.state.spawn(self._settle_and_adopt(name))

    async def _settle_and_adopt(self, name: str) -> None:
        try:
            await asyncio.sleep(0.2)  # let hub finish rename + descriptor
            await self.adopt(name)
        finally:
            self._pending.discard(name)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
                await self.maintain()
            except (CachemgrError, OSError) as err:  # the next sweep tries again
                log.error("periodic sweep failed: %s", err)
            await asyncio.sleep(self.sweep_interval)

    async def maintain(self) -> None:
        """Prune on the configured watermarks and run a slice of the background scrub."""
        now = time.monotonic()
        settings = self.state.settings
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            try:  # a job of minutes, not one store call (it logs its own line)
                await self.state.io.job(auto_prune, settings, self.state.store,
                                        what="prune (automatic, by the prune_* watermarks)")
            except (CachemgrError, OSError) as err:
                log.error("automatic prune failed: %s", err)
        if settings.scrub_rate and now - self._last_scrub >= SCRUB_EVERY:
            self._last_scrub = now
            try:  # scrub logs its own line
                await self.state.io.job(scrub, settings, self.state.store, what="scrub slice (background, scrub_rate)")
            except (CachemgrError, OSError) as err:
                log.error("background scrub failed: %s", err)

    async def sweep(self) -> None:
        """Stale locks, directories to adopt and the prefetch list, found without blocking hits."""
        locks, dirs = await self.state.io.run(scan_view, self.view, what="list the view")
        for name in locks:
            await self._check_lock(name)
        for name in dirs:
            await self.adopt(name)
        await self.check_prefetch()

    # -- adoption --------------------------------------------------------------------------
    async def adopt(self, name: str) -> bool:
        """Take a directory plain tensorflow_hub downloaded into the view into the store."""
        entry = self.view / name
        handle_text = await self.state.io.run(self._adoptable, name, what=f"look at view/{name}")
        if handle_text is None:
            return False
        try:
            handle = parse_handle(handle_text)
        except CachemgrError:
            return False
        try:
            await self.state.io.job(self._adopt_sync, entry, handle, what=f"adopt view/{name} ({handle_text})")
        except CachemgrError as err:
            log.warning("cannot adopt %s (%s): %s", entry, handle_text, err)
            self.state.metrics.error("adopt_failed")
            return False
        log.info("adopted %s (%s)", name, handle_text)
        return True

    def _adoptable(self, name: str) -> str | None:
        """The handle of ``view/<name>`` if it is a finished hub download, else None (in a store thread)."""
        entry = self.view / name
        if entry.is_symlink() or not entry.is_dir() or (self.view / f"{name}.lock").exists():
            return None
        return descriptor_handle(self.view, name)

    def _adopt_sync(self, entry: Path, handle: Any) -> None:
        store = self.state.store
        result = ingest_directory(store, entry, str(entry), Limits.of(self.state.settings))
        record_model(store, handle, result, source="adopted", url=handle.asked)
        # Swap the directory for a link: readers with open files keep them (rename, then unlink).
        moved = store.tmp / unique_name("adopted")
        link_tmp = store.tmp / unique_name("l")
        os.symlink(store.view_target(result.digest), link_tmp)
        os.rename(entry, moved)
        os.replace(link_tmp, entry)
        remove_quietly(moved)

    # -- stale hub locks ---------------------------------------------------------------------
    async def _check_lock(self, lock_name: str) -> None:
        try:
            await self.state.io.run(self._check_lock_sync, lock_name, what=f"check view/{lock_name}")
        except OSError as err:
            log.warning("cannot check %s: %s", lock_name, err)
        finally:
            self._checking.discard(lock_name)

    def _check_lock_sync(self, lock_name: str) -> None:
        lock = self.view / lock_name
        try:
            content = lock.read_text().strip()
        except OSError:
            return
        name = lock_name.removesuffix(".lock")
        host, _, rest = content.rpartition(".")  # host.pid.uuid; host may contain dots
        host, _, pid_text = host.rpartition(".")
        uuid = rest
        tmp_dir = self.view / f"{name}.{uuid}.tmp"
        dead_here = host == socket.gethostname() and pid_text.isdigit() and not pid_alive(int(pid_text))
        size = _tree_size(tmp_dir) if tmp_dir.exists() else 0
        now = time.time()
        seen = self._lock_seen.get(lock_name)
        if seen is None or seen[0] != content or seen[1] != size:
            self._lock_seen[lock_name] = (content, size, now)
            stalled = False
        else:
            stalled = now - seen[2] > HUB_LOCK_TIMEOUT
        if dead_here or stalled:
            log.info("removing stale tensorflow_hub lock %s (%s)", lock_name, content)
            remove_quietly(tmp_dir)
            try:
                if lock.read_text().strip() == content:
                    lock.unlink()
            except OSError:
                pass
            self._lock_seen.pop(lock_name, None)

    # -- prefetch list ---------------------------------------------------------------------
    def wanted(self) -> list[str]:
        path = self.state.settings.prefetch_path
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (tomllib.TOMLDecodeError, OSError) as exc:
            log.error("prefetch list %s is invalid (%s); fix it", path, exc)
            return []
        handles = doc.get("handles", [])
        return [h for h in handles if isinstance(h, str)] if isinstance(handles, list) else []

    async def check_prefetch(self) -> None:
        for handle in await self.state.io.run(self._missing_wanted, what="read the prefetch list and pins"):
            if handle not in self._prefetched:
                self._prefetched.add(handle)
                self.state.spawn(self._prefetch(handle))

    def _missing_wanted(self) -> list[str]:
        """Listed or pinned handles that the store lacks (reads files: runs in a thread)."""
        missing = []
        for handle in dict.fromkeys(self.wanted() + wanted_handles(self.state.store)):
            try:
                if handle not in self._prefetched and self.state.index.lookup(handle) is None:
                    missing.append(handle)
            except CachemgrError as err:  # a corrupt ref: resolving it again repairs or says why
                log.warning("prefetch: %s: %s", handle, err)
                missing.append(handle)
        return missing

    async def _prefetch(self, handle: str) -> None:
        try:
            await self.state.resolve(handle)
            log.info("prefetched %s", handle)
        except CachemgrError as err:
            log.warning("prefetch of %s failed: %s", handle, err)
            self._prefetched.discard(handle)
