"""The daemon's state: settings, store, single-flight resolves, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from cachemgr.errors import CachemgrError, OfflineMissError, StoreError
from cachemgr.fetch.http import make_session
from cachemgr.fetch.pull import Puller, PullResult, offline_miss
from cachemgr.handles import parse_handle
from cachemgr.ingest.publish import relink
from cachemgr.settings import Settings, load_settings
from cachemgr.store.fs import remove_quietly
from cachemgr.store.objects import open_store
from cachemgr.store.refs import RefIndex
from cachemgr.store.usage import record_handle_use
from cachemgr.store.view import hub_key
from cachemgrd import logs
from cachemgrd.hitpath import HitPath, Resolved
from cachemgrd.metrics import Metrics, store_totals

log = logging.getLogger("cachemgrd")
RESTART_ONLY = ("home", "socket", "listen")  # bound or opened at start; SIGHUP cannot change them


def client_offline_miss(text: str) -> OfflineMissError:
    """A miss for a client that asked for an offline answer (the shim under CACHEMGR_OFFLINE=1)."""
    return OfflineMissError(
        f"{text} is not in the store and this client is offline (CACHEMGR_OFFLINE in its environment), "
        f"so the daemon did not fetch it; unset CACHEMGR_OFFLINE to let it, or `cachemgr pull {text}` "
        "on a connected machine and `cachemgr import` the bundle here"
    )


class DaemonState:
    def __init__(self, settings: Settings, env: Mapping[str, str], config_arg: Any = None) -> None:
        self.env = dict(env)
        self.config_arg = config_arg
        self.settings = settings
        self.store = open_store(settings)
        self.index = RefIndex(self.store)
        self.metrics = Metrics()
        self.inflight: dict[str, asyncio.Task[PullResult]] = {}
        self.puller = Puller(settings, self.store)
        self.session: aiohttp.ClientSession | None = None
        self.started = time.time()
        self.background: set[asyncio.Task[Any]] = set()
        self._totals: tuple[float, tuple[int, int]] = (-1e9, (0, 0))
        self._totals_lock = asyncio.Lock()
        self.hits = HitPath(self.store, self.index)

    async def store_totals(self, max_age: float = 15.0) -> tuple[int, int]:
        """(blob bytes, models), rescanned at most every ``max_age`` seconds (scrapes are frequent).

        The scan walks every blob (a million on a big store), so it runs in a thread: hits are
        answered meanwhile. Concurrent callers share one scan.
        """
        if time.monotonic() - self._totals[0] > max_age:
            async with self._totals_lock:
                if time.monotonic() - self._totals[0] > max_age:
                    loop = asyncio.get_running_loop()
                    totals = await loop.run_in_executor(None, store_totals, self.store.home)
                    self._totals = (time.monotonic(), totals)
        return self._totals[1]

    async def start(self) -> None:
        self.session = make_session(self.settings)

    async def close(self) -> None:
        tasks = list(self.inflight.values()) + list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        self.puller.close()

    def reload(self, overrides: Mapping[str, Any]) -> Settings:
        """Re-read config and environment (SIGHUP). Raises ConfigError and keeps the old ones."""
        settings = load_settings(self.env, self.config_arg, overrides)
        changed = [k for k in RESTART_ONLY if getattr(settings, k) != getattr(self.settings, k)]
        if changed:
            log.warning("reload: %s changed; restart the daemon to apply that (keeping the running value)",
                        ", ".join(changed))
            settings = replace(settings, **{k: getattr(self.settings, k) for k in changed})
        self.settings = settings
        self.puller.settings = settings  # same worker pool: fetches already running keep going
        log.info("configuration reloaded from %s", [str(p) for p in settings.config_files] or "defaults")
        return settings

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def resolve(self, text: str, offline: bool = False) -> Resolved:
        """The model for ``text``, fetching it once however many callers ask at once; a miss is an
        OfflineMissError if the daemon is offline or the client asked for an ``offline`` answer."""
        resolved = self.hits.lookup(text)
        if resolved is not None:
            self.metrics.hits += 1
            return resolved
        try:
            resolved = await self._resolve(text, offline)
        except CachemgrError as err:
            logs.resolve_failed(log, text, err)
            raise
        self.hits.remember(text, resolved)
        return resolved

    def served(self) -> None:
        self.metrics.hits += 1

    async def _resolve(self, text: str, offline: bool = False) -> Resolved:
        handle = parse_handle(text)
        ref = self.index.lookup(text)
        refresh = False
        if ref is not None and not self.store.snapshot_path(ref.manifest).is_dir():
            try:  # pruned or quarantined: rebuild from intact blobs, else fetch again
                ref = relink(self.store, ref, handle)
            except StoreError as err:
                log.warning("%s is out of service (%s); fetching it again", text, err)
                ref, refresh = None, True
        fetched = False
        if ref is None:
            if self.settings.offline:
                raise offline_miss(text)
            if offline:
                raise client_offline_miss(text)
            key = handle.canonical
            task = self.inflight.get(key)
            self.metrics.misses += 1
            if task is None:
                self.metrics.fetches += 1
                task = asyncio.ensure_future(self._fetch(text, refresh))
                self.inflight[key] = task
                task.add_done_callback(self._forget(key))
            result = await asyncio.shield(task)
            if result.error is not None:
                raise result.error
            assert result.ref is not None
            ref = result.ref
            fetched = True
        else:
            self.metrics.hits += 1
        view_name = hub_key(text)
        if not os.path.lexists(self.store.view / view_name) or text not in ref.aliases:
            ref = relink(self.store, ref, handle)
        record_handle_use(self.store.home, text)
        return Resolved(ref, text, str(self.store.view / view_name),
                        str(self.store.snapshot_path(ref.manifest)), fetched)

    def _forget(self, key: str) -> Any:
        def done(_task: asyncio.Task[PullResult]) -> None:
            self.inflight.pop(key, None)

        return done

    async def _fetch(self, text: str, refresh: bool = False) -> PullResult:
        marker = self.store.new_temp("inflight")  # a concurrent prune keeps refs written while it exists
        started = time.monotonic()
        try:
            result = await self.puller.pull_one(text, self.session, refresh)
        except CachemgrError as err:
            result = PullResult(text, "failed", error=err)
        finally:
            remove_quietly(marker)
        logs.fetch_done(log, text, result, time.monotonic() - started)
        if result.ref is not None and result.ref.archive_size:
            self.metrics.upstream_bytes += result.ref.archive_size
        return result
