"""The daemon's state: settings, store, single-flight resolves, metrics.

Nothing here touches the store on the event loop: every call goes through ``self.io`` (store
threads, each call's start recorded, see ``cachemgr.store.aio``), so that a hung mount leaves
health, status and the hits whose files answer still served, and the stuck call reported.
Opening the store too (``DaemonState.open``): in a store job, which first undoes what dead runs
left half-done, as the CLI does before each command (``cachemgr.lifecycle.recover``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from cachemgr.cluster.nodes import heartbeat
from cachemgr.errors import CachemgrError, OfflineMissError, StoreError
from cachemgr.fetch.http import open_session
from cachemgr.fetch.pull import Puller, PullResult, offline_miss
from cachemgr.handles import Handle, parse_handle
from cachemgr.ingest.publish import relink
from cachemgr.lifecycle.recover import recover_dead_runs
from cachemgr.settings import Settings, load_settings
from cachemgr.store.aio import StoreIO
from cachemgr.store.fs import remove_quietly
from cachemgr.store.objects import Store, open_store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.store.view import hub_key
from cachemgrd import logs
from cachemgrd.hitpath import HitPath, Resolved, mark_used
from cachemgrd.metrics import Metrics, store_totals

log = logging.getLogger("cachemgrd")
RESTART_ONLY = ("home", "socket", "listen")  # bound or opened at start; SIGHUP cannot change them
CLOSE_WAIT = 2.0  # how long cancelled tasks get to end at shutdown (their store calls may hang)
TOTALS_WAIT = 1.0  # how long status and metrics wait for a rescan of the totals before giving the last ones


def client_offline_miss(text: str) -> OfflineMissError:
    """A miss for a client that asked for an offline answer (the shim under CACHEMGR_OFFLINE=1)."""
    return OfflineMissError(
        f"{text} is not in the store and this client is offline (CACHEMGR_OFFLINE in its environment), "
        f"so the daemon did not fetch it; unset CACHEMGR_OFFLINE to let it, or `cachemgr pull {text}` "
        "on a connected machine and `cachemgr import` the bundle here"
    )


def open_for_daemon(settings: Settings) -> Store:
    """At start-up, in a store thread: the store (made if it is not there yet), with dead runs'
    half-done publishes and prunes undone and their temps collected, before anything is served.

    An existing store is not "created" again: that makes its directories (``mkdir``, a write),
    and a start on a store that answers reads but hangs writes (frozen, or a full quota on
    some filesystems) would hang there with nothing to do."""
    probe = Store(settings.home, settings.view)
    fresh = not probe.exists() or (probe.view_elsewhere and not probe.view.is_dir())
    store = open_store(settings, create=fresh, clean=False)
    done = recover_dead_runs(settings, store, collect_temps=True)
    if done.published or done.restored:
        log.warning("finished what dead runs left half-done: publishes of %s; restored from dead prunes: %s",
                    done.published or "none", done.restored or "none")
    return store


class DaemonState:
    def __init__(self, settings: Settings, env: Mapping[str, str], config_arg: Any, store: Store,
                 io: StoreIO) -> None:
        self.env = dict(env)
        self.config_arg = config_arg
        self.settings = settings
        self.store = store
        self.index = RefIndex(self.store)
        self.metrics = Metrics()
        self.inflight: dict[str, asyncio.Task[PullResult]] = {}
        self.io = io
        self.puller = Puller(settings, self.store, io=self.io)
        self.session: aiohttp.ClientSession | None = None
        self.started = time.time()
        self.background: set[asyncio.Task[Any]] = set()
        self._totals: tuple[float, tuple[int, int]] = (-1e9, (0, 0))
        self._scan: asyncio.Task[None] | None = None
        self.hits = HitPath(self.store, self.index, settings.node_id, self.io)

    @classmethod
    async def start_up(cls, settings: Settings, env: Mapping[str, str], config_arg: Any = None) -> DaemonState:
        """The state, with the store opened and dead runs' leftovers undone in a store job."""
        io = StoreIO(settings.stuck_io_after)
        try:
            store = await io.job(open_for_daemon, settings, what="open the store and undo what dead runs left")
        except BaseException:
            io.close()
            raise
        return cls(settings, env, config_arg, store, io)

    async def store_totals(self, max_age: float = 15.0) -> tuple[int, int]:
        """(blob bytes, models), rescanned at most every ``max_age`` seconds (scrapes are frequent).

        The scan walks every blob (a million on a big store), so it runs in a store thread, one
        at a time; a caller waits for it at most TOTALS_WAIT seconds, then has the last totals:
        status and metrics answer even while the store hangs.
        """
        if time.monotonic() - self._totals[0] > max_age and (self._scan is None or self._scan.done()):
            self._scan = asyncio.ensure_future(self._rescan())
        if self._scan is not None and not self._scan.done():
            await asyncio.wait([self._scan], timeout=TOTALS_WAIT)
        return self._totals[1]

    async def _rescan(self) -> None:
        try:
            totals = await self.io.run(store_totals, self.store.home, what="count the store's blobs and models")
        except OSError as err:
            log.warning("cannot count the store's totals: %s", err)
            return
        self._totals = (time.monotonic(), totals)

    async def start(self) -> None:
        self.session = await open_session(self.settings)  # the CA files are read in a thread
        self.spawn(self._heartbeats())
        self.spawn(self._report_stuck())

    async def _report_stuck(self) -> None:
        """Log each store call once, when it has run past ``stuck_io_after``."""
        while True:
            await asyncio.sleep(min(max(self.settings.stuck_io_after / 2, 0.1), 5.0))
            for call in self.io.newly_stuck():
                if call.get("job"):  # a job is stuck for getting no CPU time, not for running long
                    log.warning("background job stuck, no CPU time for %.0fs: %s (thread %s, running %.0fs); "
                                "is the store's filesystem answering?", call["idle"], call["what"],
                                call["thread"], call["seconds"])
                    continue
                log.warning("store call stuck for %.0fs: %s (thread %s); is the store's filesystem "
                            "answering?", call["seconds"], call["what"], call["thread"])

    async def _heartbeats(self) -> None:
        """This node's record in the store (``cachemgr nodes``), renewed at a third of lease_timeout."""
        while True:
            try:
                await self.io.run(heartbeat, self.settings, "daemon", self.started, what="write this node's heartbeat")
            except OSError as exc:
                log.warning("cannot write this node's heartbeat in %s: %s", self.store.home, exc)
            await asyncio.sleep(max(self.settings.lease_timeout / 3.0, 0.05))

    async def close(self) -> None:
        tasks = list(self.inflight.values()) + list(self.background)
        for task in tasks:
            task.cancel()
        if tasks:  # a task whose cleanup is a store call on a hung mount is not waited for
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        if self.session is not None:
            await self.session.close()
        await self.puller.aclose()
        self.io.submit(self.puller.close, what="stop the ingest threads")  # joins them: not on the loop
        self.io.close()

    async def reload(self, overrides: Mapping[str, Any]) -> Settings:
        """Re-read config and environment (SIGHUP; the files in a store thread). Raises ConfigError
        and keeps the old ones."""
        settings = await self.io.run(load_settings, self.env, self.config_arg, overrides,
                                     what="re-read the configuration")
        changed = [k for k in RESTART_ONLY if getattr(settings, k) != getattr(self.settings, k)]
        if changed:
            log.warning("reload: %s changed; restart the daemon to apply that (keeping the running value)",
                        ", ".join(changed))
            settings = replace(settings, **{k: getattr(self.settings, k) for k in changed})
        self.settings = settings
        self.puller.settings = settings  # same worker pool: fetches already running keep going
        self.puller.coordinator.settings = settings
        self.io.stuck_after = settings.stuck_io_after
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
        resolved = await self.hits.lookup(text)
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

    async def pull_artifact(self, text: str) -> Resolved:
        """``/v1/pull`` of ``oci://HOST[:PORT]/REPO:TAG``: that artifact into the store, as
        ``cachemgr pull`` does (once however many ask at once; only the blobs the store lacks)."""
        task = self.inflight.get(text)
        if task is None:
            self.metrics.fetches += 1
            task = asyncio.ensure_future(self._fetch(text))
            self.inflight[text] = task
            task.add_done_callback(self._forget(text))
        result = await asyncio.shield(task)
        if result.error is not None:  # logged by _fetch
            raise result.error
        assert result.ref is not None
        ref = result.ref
        await mark_used(self.io, self.store.home, ref.handle, self.settings.node_id)
        return Resolved(ref, text, str(self.store.view / hub_key(ref.handle)),
                        str(self.store.snapshot_path(ref.manifest)), True)

    def _stored(self, text: str, handle: Handle) -> tuple[Ref | None, bool]:
        """(the stored ref for ``text`` or None, whether to fetch it afresh); in a store thread."""
        ref = self.index.lookup(text)
        if ref is not None and not self.store.snapshot_path(ref.manifest).is_dir():
            try:  # pruned or quarantined: rebuild from intact blobs, else fetch again
                return relink(self.store, ref, handle), False
            except StoreError as err:
                log.warning("%s is out of service (%s); fetching it again", text, err)
                return None, True
        return ref, False

    def _linked(self, text: str, ref: Ref, handle: Handle) -> Ref:
        """``ref``, with ``text`` linked in the view if it was not yet; in a store thread."""
        if not os.path.lexists(self.store.view / hub_key(text)) or text not in ref.aliases:
            ref = relink(self.store, ref, handle)
        return ref

    async def _resolve(self, text: str, offline: bool = False) -> Resolved:
        handle = parse_handle(text)
        ref, refresh = await self.io.run(self._stored, text, handle, what=f"look up {text}")
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
        ref = await self.io.run(self._linked, text, ref, handle, what=f"link {text} in the view")
        await mark_used(self.io, self.store.home, text, self.settings.node_id)
        return Resolved(ref, text, str(self.store.view / hub_key(text)),
                        str(self.store.snapshot_path(ref.manifest)), fetched)

    def _forget(self, key: str) -> Any:
        def done(_task: asyncio.Task[PullResult]) -> None:
            self.inflight.pop(key, None)

        return done

    async def _fetch(self, text: str, refresh: bool = False) -> PullResult:
        started = time.monotonic()
        try:  # a concurrent prune keeps refs written while the marker exists
            marker = await self.io.run(self.store.new_temp, "inflight", what=f"mark {text} in flight")
        except OSError as err:
            return PullResult(text, "failed", error=StoreError(f"cannot write in the store's tmp/: {err}"))
        try:
            result = await self.puller.pull_one(text, self.session, refresh)
        except CachemgrError as err:
            result = PullResult(text, "failed", error=err)
        finally:  # awaited: a stopping daemon exits only once the mark is gone
            await self.io.run(remove_quietly, marker, what=f"remove the in-flight mark of {text}")
        logs.fetch_done(log, text, result, time.monotonic() - started)
        if result.ref is not None and result.ref.archive_size:
            self.metrics.upstream_bytes += result.ref.archive_size
        return result
