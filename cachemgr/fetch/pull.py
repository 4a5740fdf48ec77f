"""``pull`` and ``add``: get models into the store (network fetch or local file/directory)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachemgr.cluster.nodes import announce
from cachemgr.errors import CachemgrError, OfflineMissError, StoreError, UsageError
from cachemgr.fetch.coordinate import Claim, Coordinator
from cachemgr.fetch.http import Fetcher, open_session
from cachemgr.fetch.upstream import fetch_from_upstreams
from cachemgr.fetch.upstream_groups import Failover
from cachemgr.handles import Handle, parse_handle, with_compressed_query
from cachemgr.ingest.pipe import ChunkPipe, ReaderGone
from cachemgr.ingest.publish import record_model, relink
from cachemgr.ingest.unpack import ingest_directory, ingest_stream
from cachemgr.oci.pull import pull_reference
from cachemgr.oci.reference import is_oci
from cachemgr.progress import Bars
from cachemgr.settings import Settings
from cachemgr.store.aio import StoreIO
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex


@dataclass(frozen=True)
class PullResult:
    asked: str
    status: str  # "pulled" | "present" | "failed"
    ref: Ref | None = None
    error: CachemgrError | None = None
    new_blobs: int = 0
    new_bytes: int = 0
    resumes: int = 0

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"handle": self.asked, "status": self.status}
        if self.ref is not None:
            doc.update(
                canonical=self.ref.handle, manifest=self.ref.manifest, size=self.ref.size,
                files=self.ref.files, url=self.ref.url, aliases=list(self.ref.aliases),
                new_blobs=self.new_blobs, new_bytes=self.new_bytes, resumes=self.resumes,
            )
        if self.error is not None:
            doc["error"] = {"type": self.error.code, "message": str(self.error)}
        return doc


def pull_handles(settings: Settings, store: Store, texts: list[str], refresh: bool = False,
                 bars: Bars | None = None) -> list[PullResult]:
    """Pull ``texts`` concurrently, synchronously: for the CLI, pins and repair (the daemon has its loop)."""
    announce(settings, fault=store.fault)
    puller = Puller(settings, store, bars)
    try:
        return asyncio.run(puller.pull_many(texts, refresh))
    finally:
        puller.close()


def offline_miss(text: str) -> OfflineMissError:
    return OfflineMissError(
        f"{text} is not in the store and offline mode is on (CACHEMGR_OFFLINE/--offline); "
        f"pull it on a connected machine and `cachemgr import` the bundle here, "
        f"or go online and run `cachemgr pull {text}`"
    )


class Puller:
    def __init__(self, settings: Settings, store: Store, bars: Bars | None = None, io: StoreIO | None = None) -> None:
        self.settings = settings
        self.store = store
        self.io = io or StoreIO(settings.stuck_io_after)  # the loop's store calls (the daemon passes its own)
        self.index = RefIndex(store)
        self.bars = bars or Bars(False)
        self.coordinator = Coordinator(settings, store, self.io)
        self.failover = Failover()  # this process's dead upstreams, remembered from fetch to fetch
        self._upstream_session: Any = None  # made at the first upstream fetch (see _upstream)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="ingest"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    async def _upstream(self) -> Any:
        """The session for upstream requests: it never takes a proxy from the environment, so an
        attempt that ``no_proxy`` sends direct goes direct (the origin's session would use
        HTTP_PROXY there)."""
        if self._upstream_session is None:
            self._upstream_session = await open_session(self.settings, trust_env=False)
        return self._upstream_session

    async def aclose(self) -> None:
        """Close the upstream session, if one was made (on the loop that used it)."""
        if self._upstream_session is not None:
            await self._upstream_session.close()
            self._upstream_session = None

    async def pull_many(self, texts: list[str], refresh: bool = False) -> list[PullResult]:
        sem = asyncio.Semaphore(self.settings.concurrency)
        session = None if self.settings.offline else await open_session(self.settings)
        try:
            async def one(text: str) -> PullResult:
                async with sem:
                    try:
                        return await self.pull_one(text, session, refresh)
                    except CachemgrError as err:
                        return PullResult(text, "failed", error=err)
            with self.store.in_flight():
                return list(await asyncio.gather(*(one(t) for t in texts)))
        finally:
            if session is not None:
                await session.close()
            await self.aclose()

    async def pull_one(self, text: str, session: Any, refresh: bool = False) -> PullResult:
        if is_oci(text):  # an artifact reference: oci://HOST[:PORT]/REPO:TAG
            return await self._pull_oci(text, session)
        handle = parse_handle(text)
        existing = await self.io.run(self.index.lookup, text, what=f"look up {text}")
        if existing is not None and not refresh:
            present = await self.io.run(self._present, existing, handle, what=f"relink {text}")
            if present is not None:
                return PullResult(text, "present", present)
            existing = None  # pruned while we looked: fetch it again
        if self.settings.offline or session is None:
            if existing is not None:
                relinked = await self.io.run(relink, self.store, existing, handle, what=f"relink {text}")
                return PullResult(text, "present", relinked)
            raise offline_miss(text)
        while True:  # one fetch across every node of a shared store (fetch/coordinate.py)
            claim = await self.coordinator.claim(handle)
            if claim is not None:
                break
            await self.coordinator.wait_for_holder(handle)
            done = await self.io.run(self._done_elsewhere, text, handle, what=f"look up {text}")
            if done is not None:
                return done
        try:
            done = None if refresh else await self.io.run(self._done_elsewhere, text, handle, what=f"look up {text}")
            return done or await self._fetch(handle, session, claim)
        finally:
            await self.io.run(claim.finish, what=f"release the fetch lease of {text}")

    async def _pull_oci(self, text: str, session: Any) -> PullResult:
        if self.settings.offline or session is None:
            raise OfflineMissError(f"{text} is in a registry and offline mode is on (CACHEMGR_OFFLINE/--offline); "
                                   "go online, or export the model to an OCI layout and `cachemgr import` it")
        got = await pull_reference(self.settings, self.store, text)  # a registry session of its own
        return PullResult(text, "pulled", got.ref, None, got.counts.downloaded, got.counts.downloaded_bytes)

    def _done_elsewhere(self, text: str, handle: Handle) -> PullResult | None:
        """The model another node (or process) published while we waited, if it did."""
        ref = self.index.lookup(text)
        present = self._present(ref, handle) if ref is not None else None
        return PullResult(text, "present", present) if present is not None else None

    async def _fetch(self, handle: Handle, session: Any, claim: Claim) -> PullResult:
        if self.settings.upstreams:
            ref = await fetch_from_upstreams(self.settings, self.store, await self._upstream(), handle, self.failover,
                                             io=self.io)
            if ref is not None:
                return PullResult(handle.asked, "pulled", ref)
        return await self._download(handle, session, claim)

    def _present(self, ref: Ref, handle: Handle) -> Ref | None:
        """Relink a stored model, marking its ref as in use so that a concurrent prune keeps it;
        None if a prune removed it meanwhile."""
        path = self.index.ref_path(ref.handle)
        try:
            os.utime(path)
            ref = relink(self.store, ref, handle)
        except FileNotFoundError:
            return None
        except StoreError:
            if path.exists():
                raise
            return None
        except OSError:
            ref = relink(self.store, ref, handle)  # another user's ref: cannot mark it
        return ref if path.exists() else None

    async def _download(self, handle: Handle, session: Any, claim: Claim) -> PullResult:
        url = handle.fetch_url if not handle.compressed_query else with_compressed_query(
            handle.fetch_url
        )
        pipe = ChunkPipe()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self.pool, self._ingest_pipe, pipe, handle.asked)
        bar = self.bars.new(handle.asked)
        fetcher = Fetcher(self.settings, session)
        try:
            info = await fetcher.fetch(url, pipe.put, bar.update_to)
        except ReaderGone:
            info = None  # the ingest thread failed first; its error is the real one
        except BaseException as exc:
            await pipe.finish(exc if isinstance(exc, Exception) else CancelledIngest())
            await asyncio.gather(job, return_exceptions=True)
            raise
        finally:
            bar.close()
        if info is not None:
            await pipe.finish()
        result = await job
        assert info is not None
        await self.io.run(claim.check, what=f"check the fetch lease of {handle.asked}")  # only the holder publishes
        ref = await self.io.run(functools.partial(
            record_model, self.store, handle, result, source="pull", url=info.url, chain=info.chain,
            etag=info.etag, x_goog_hash=info.x_goog_hash, archive_size=info.size,
        ), what=f"publish {handle.asked}")
        return PullResult(handle.asked, "pulled", ref, None, result.new_blobs, result.new_bytes,
                          info.resumes)

    def _ingest_pipe(self, pipe: ChunkPipe, name: str) -> Any:
        try:
            return ingest_stream(self.store, pipe, name, Limits.of(self.settings))
        finally:
            pipe.close()


class CancelledIngest(Exception):
    """Passed to the ingest thread when the download was cancelled."""


def add_local(settings: Settings, store: Store, text: str, path: Path) -> PullResult:
    """``cachemgr add``: ingest a local archive or SavedModel directory under a handle."""
    handle = parse_handle(text)
    limits = Limits.of(settings)
    name = str(path)
    announce(settings, fault=store.fault)
    if not path.is_dir() and not path.is_file():
        raise UsageError(f"{path} does not exist; give a .tar, .tar.gz, .tar.zst or a SavedModel directory")
    with store.in_flight():
        if path.is_dir():
            result = ingest_directory(store, path, name, limits)
        else:
            with path.open("rb") as fh:
                result = ingest_stream(store, fh, name, limits)
        ref = record_model(store, handle, result, source="add", url=path.resolve().as_uri(),
                           archive_size=path.stat().st_size if path.is_file() else None)
    return PullResult(text, "pulled", ref, None, result.new_blobs, result.new_bytes)
