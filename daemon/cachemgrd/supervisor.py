"""The primary's worker processes: start, watch and restart them, reload them, stop them.

Workers share the primary's listening sockets (the kernel hands each new connection to
whichever process accepts first), so hits are answered on every core while the primary
alone fetches. They reach the primary through a private Unix socket in a 0700 directory
of their own (never the store, which may be on NFS), where the shared counters live too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachemgr.errors import ConfigError
from cachemgr.settings import MAX_WORKERS, Settings
from cachemgrd.counters import SharedCounters
from cachemgrd.listeners import MAX_UNIX_PATH, Listeners
from cachemgrd.worker import READY, WorkerSpec

log = logging.getLogger("cachemgrd")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
SLOTS = 2 * MAX_WORKERS  # a reload runs the old and the new workers side by side for a moment
RESTART_BACKOFF = (1.0, 30.0)  # first and longest wait before a crashed worker is started again
STABLE_AFTER = 60.0  # a worker that lived this long resets the backoff
PRIMARY_SOCKET = "primary.sock"  # in the private directory: where workers forward to the primary
_PRIMARY_ONLY_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                     "WATCHDOG_PID")


@dataclass
class Worker:
    slot: int
    proc: asyncio.subprocess.Process
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _private_dir() -> Path:
    """A fresh 0700 directory for the primary's private socket and the shared counters: under
    TMPDIR, unless the socket path would be too long there for a Unix socket; then under /tmp."""
    for base in (None, "/tmp"):
        path = Path(tempfile.mkdtemp(prefix="cachemgrd-", dir=base))
        if len(os.fsencode(path / PRIMARY_SOCKET)) <= MAX_UNIX_PATH:
            return path
        path.rmdir()
    raise ConfigError(f"no directory for the daemon's private socket is short enough (TMPDIR {path.parent}); "
                      "set TMPDIR to a short path")


class WorkerPool:
    """``count - 1`` workers beside the primary (``settings.worker_count``)."""

    def __init__(self, listeners: Listeners, env: Mapping[str, str]) -> None:
        self.private_dir = _private_dir()
        self.primary_socket = str(self.private_dir / PRIMARY_SOCKET)
        self.counters = SharedCounters(self.private_dir / "counters", SLOTS, create=True)
        self.fds = tuple(s.fileno() for s in listeners.sockets)
        self.env = {k: v for k, v in env.items() if k not in _PRIMARY_ONLY_ENV}
        self.current: list[Worker] = []
        self._busy_slots: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._backoff = RESTART_BACKOFF[0]
        self._settings: Settings | None = None
        self._reloading = asyncio.Lock()
        self.stopping = False

    def pids(self) -> list[int]:
        return [w.pid for w in self.current]

    def totals(self) -> dict[str, int]:
        return self.counters.totals()

    async def start(self, settings: Settings, count: int) -> None:
        """Start ``count - 1`` workers and wait until each serves; one that fails is tried again later."""
        self._settings = settings
        started = await asyncio.gather(*(self._spawn(settings) for _ in range(count - 1)))
        self.current += [w for w in started if w is not None]
        for _ in range(started.count(None)):
            self._track(self._start_later())

    async def reload(self, settings: Settings, count: int) -> None:
        """New workers with ``settings``; the old ones stop once the new serve (finishing what they have)."""
        async with self._reloading:  # two quick SIGHUPs: the second waits, then replaces the first's
            await self._replace(settings, count)

    async def _replace(self, settings: Settings, count: int) -> None:
        self._settings = settings
        old = list(self.current)
        fresh = [w for w in await asyncio.gather(*(self._spawn(settings) for _ in range(count - 1))) if w]
        if self.stopping:  # shut down while they started
            for worker in fresh:
                _signal(worker, signal.SIGTERM)
            return
        if len(fresh) < count - 1:
            log.error("reload: %d of %d new workers started; keeping the old ones too", len(fresh), count - 1,
                      extra={"event": "workers_reload_failed", "started": len(fresh), "wanted": count - 1})
            self.current += fresh
            return
        self.current = fresh
        for worker in old:
            _signal(worker, signal.SIGTERM)
        log.info("workers reloaded: %s (were %s)", self.pids(), [w.pid for w in old],
                 extra={"event": "workers_reloaded", "workers": self.pids(), "were": [w.pid for w in old]})

    async def stop(self) -> None:
        self.stopping = True
        workers = list(self.current)
        for worker in workers:
            _signal(worker, signal.SIGTERM)
        waits = [asyncio.ensure_future(w.proc.wait()) for w in workers]
        if waits:
            _done, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT)
            for worker, wait in zip(workers, waits, strict=True):
                if wait in late:
                    log.warning("worker %d did not stop in %.0f s; killing it", worker.pid, STOP_TIMEOUT,
                                extra={"event": "worker_killed", "worker": worker.pid})
                    _signal(worker, signal.SIGKILL)
            await asyncio.gather(*waits, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.current = []

    def close(self) -> None:
        """After ``stop`` and after the primary stopped serving (status reads the counters until then)."""
        self.counters.close()
        shutil.rmtree(self.private_dir, ignore_errors=True)

    def _slot(self) -> int:
        slot = min(set(range(SLOTS)) - self._busy_slots)
        self._busy_slots.add(slot)
        return slot

    async def _spawn(self, settings: Settings) -> Worker | None:
        slot = self._slot()
        spec = WorkerSpec(settings, self.fds, self.primary_socket, str(self.counters.path), SLOTS, slot)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cachemgrd.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, pass_fds=self.fds, env=self.env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec.encode())  # the pipe stays open: its EOF tells the worker we are gone
        line = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        if line != READY:
            log.error("a worker (pid %d) did not start; see its messages above", proc.pid,
                      extra={"event": "worker_start_failed", "worker": proc.pid})
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._busy_slots.discard(slot)
            return None
        worker = Worker(slot, proc)
        self._track(self._watch(worker))
        return worker

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, worker: Worker) -> None:
        code = await worker.proc.wait()
        self._busy_slots.discard(worker.slot)
        if self.stopping or worker not in self.current:
            return  # told to stop (shutdown or reload)
        self.current.remove(worker)
        if time.monotonic() - worker.started > STABLE_AFTER:
            self._backoff = RESTART_BACKOFF[0]
        log.warning("worker %d exited (%s); starting another in %.0f s", worker.pid, code, self._backoff,
                    extra={"event": "worker_exited", "worker": worker.pid, "code": code, "restart_in": self._backoff})
        await self._start_later()

    async def _start_later(self) -> None:
        """One more worker after the backoff, trying again (backing off further) while starts fail."""
        while not self.stopping and self._settings is not None:
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, RESTART_BACKOFF[1])
            if self.stopping:
                return
            worker = await self._spawn(self._settings)
            if worker is None:
                continue
            if self.stopping:
                _signal(worker, signal.SIGTERM)
                return
            self.current.append(worker)
            log.info("worker %d started", worker.pid, extra={"event": "worker_started", "worker": worker.pid})
            return


def _signal(worker: Worker, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.proc.send_signal(sig)
