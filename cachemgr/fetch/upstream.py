"""Fetching from other cachemgr daemons (``upstreams``) through their content-addressed API.

An upstream is outside this process's trust: its ref answer passes :func:`parse_upstream_ref`,
its manifest passes the same checks as an archive (``manifest.parse_manifest``) before
anything is written, and each blob this store lacks is read no further than the size the
manifest gives it and verified against its sha256 before it is adopted, whatever path it
took. Through an HTTP proxy (a group's ``proxy``, else ``Settings.proxy``: CACHEMGR_PROXY or
HTTP_PROXY), a blob or manifest that arrives corrupt is asked for once more with
``Cache-Control: no-cache`` (as CVMFS does), so that the cache fetches it again.

Upstreams are groups, tried in the order :mod:`cachemgr.fetch.upstream_groups` plans (random
within a group, failover to the next, dead ones skipped for a back-off); a dead upstream costs
at most a short connect timeout. :func:`fetch_from_one` is the one dispatch by URL scheme.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cachemgr.errors import CachemgrError, IntegrityError, UnsafeManifestError
from cachemgr.fetch.http import tls_context
from cachemgr.fetch.receive import BlobReceiver, receive
from cachemgr.fetch.upstream_groups import Attempt, Failover
from cachemgr.handles import Handle
from cachemgr.ingest.publish import record_model
from cachemgr.ingest.unpack import IngestResult
from cachemgr.oci.pull import pull_from_registry
from cachemgr.settings import Settings
from cachemgr.store.aio import StoreIO
from cachemgr.store.fs import remove_quietly
from cachemgr.store.manifest import Limits, Manifest, is_digest, parse_manifest
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref

log = logging.getLogger("cachemgr.fetch.upstream")
UPSTREAM_CONNECT_TIMEOUT = 2.0
# Sent when an answer arrived corrupt and is asked for again: a cache on the way fetches anew.
NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache"}
UPSTREAM_READ_TIMEOUT = 60.0  # at most this long without a byte: a stalled upstream is a failed one
_TIMEOUT = aiohttp.ClientTimeout(sock_connect=UPSTREAM_CONNECT_TIMEOUT, sock_read=UPSTREAM_READ_TIMEOUT)


async def _get_json(session: aiohttp.ClientSession, url: str, proxy: str | None) -> dict[str, Any] | None:
    async with session.get(url, proxy=proxy, timeout=aiohttp.ClientTimeout(sock_connect=UPSTREAM_CONNECT_TIMEOUT,
                                                                           sock_read=60)) as resp:
        if resp.status == 404:
            return None
        resp.raise_for_status()
        doc: dict[str, Any] = await resp.json()
        return doc


@dataclass(frozen=True)
class UpstreamRef:
    """An upstream's ``/v1/refs`` answer, checked field by field."""

    manifest: str
    url: str
    aliases: tuple[str, ...]
    etag: str | None
    x_goog_hash: str | None
    archive_size: int | None


def parse_upstream_ref(doc: Any, base: str) -> UpstreamRef:
    """The one check of a ref answer from an upstream daemon; UnsafeManifestError if it is malformed."""
    def bad(what: str) -> UnsafeManifestError:
        return UnsafeManifestError(f"upstream {base}: its ref answer has {what}; the upstream is broken or "
                                   "hostile, fix or remove it from upstreams")

    if not isinstance(doc, dict):
        raise bad("no JSON object")
    digest = doc.get("manifest")
    if not is_digest(digest):
        raise bad(f"an invalid manifest digest {digest!r}")
    aliases = doc.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise bad("aliases that are not a list of strings")
    optional = {k: doc.get(k) for k in ("etag", "x_goog_hash")}
    if not all(v is None or isinstance(v, str) for v in optional.values()):
        raise bad("an etag or x_goog_hash that is not a string")
    size = doc.get("archive_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise bad(f"an invalid archive_size {size!r}")
    url = doc.get("url", "")
    if not isinstance(url, str):
        raise bad("a url that is not a string")
    return UpstreamRef(str(digest), url, tuple(aliases), optional["etag"], optional["x_goog_hash"], size)


async def _fetch_blob_checked(store: Store, up: Attempt, digest: str, size: int, io: StoreIO,
                              tls: ssl.SSLContext | None) -> None:
    """One blob, verified; a corrupt arrival is asked for once more with ``no-cache``."""
    try:
        await _fetch_blob(store, up, digest, size, {}, io, tls)
    except IntegrityError as exc:
        log.warning("upstream %s: blob %s arrived corrupt (%s); asking again with Cache-Control: no-cache",
                    up.describe(), digest, exc)
        await _fetch_blob(store, up, digest, size, NO_CACHE, io, tls)


def _stage(store: Store) -> tuple[Path, int]:
    """A fresh staging directory and its ``blob`` file, open for writing (in a store thread)."""
    staging = store.new_temp("upblob")
    try:
        return staging, os.open(staging / "blob", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except OSError:
        remove_quietly(staging)
        raise


async def _fetch_blob(store: Store, up: Attempt, digest: str, size: int, headers: dict[str, str], io: StoreIO,
                      tls: ssl.SSLContext | None) -> None:
    """Fetch one blob of ``size`` bytes (the manifest's word); more or fewer bytes are refused.
    The body is received, hashed and written off the event loop (:mod:`cachemgr.fetch.receive`,
    every write a store call in ``io``), not through the aiohttp session, which costs far more CPU."""
    base = up.url
    staging, fd = await io.run(_stage, store, what=f"stage blob {digest}")
    try:
        target = staging / "blob"
        receiver = BlobReceiver(f"{base}/v1/blobs/{digest}", up.proxy, headers, size, fd, io, f"blob {digest}",
                                tls, UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_READ_TIMEOUT)
        got, sha = await receive(receiver)  # the receiving thread closes fd once its writes are done
        if got != size:
            raise IntegrityError(f"upstream {base}: blob {digest} arrived with {'more than ' if got > size else ''}"
                                 f"{min(got, size)} bytes, but its manifest says {size}; the upstream is broken or "
                                 "hostile")
        if sha != digest:
            raise IntegrityError(f"upstream {base}: blob {digest} arrived with sha256 {sha}; "
                                 "the upstream store is corrupt, run cachemgr verify there")
        await io.run(store.adopt_blob, target, digest, what=f"adopt blob {digest}")
    finally:
        await io.run(remove_quietly, staging, what=f"remove the staging of blob {digest}")


def _publish(store: Store, handle: Handle, manifest: Manifest, new_blobs: int, new_bytes: int,
             base: str, upstream_ref: UpstreamRef) -> Ref:
    """Manifest, snapshot, ref and view links of a model whose blobs are all here (in a store thread)."""
    store.write_manifest(manifest)
    snapshot = store.materialize(manifest)
    result = IngestResult(manifest, upstream_ref.manifest, snapshot, None, new_blobs, new_bytes)
    return record_model(store, handle, result, source=f"upstream {base}", url=upstream_ref.url,
                        chain=list(upstream_ref.aliases), etag=upstream_ref.etag,
                        x_goog_hash=upstream_ref.x_goog_hash, archive_size=upstream_ref.archive_size)


def _missing(store: Store, digests: list[str]) -> list[str]:
    return sorted(d for d in digests if not store.has_blob(d))


async def fetch_from_upstream(
    settings: Settings, store: Store, session: aiohttp.ClientSession, up: Attempt, handle: Handle,
    io: StoreIO | None = None,
) -> Ref | None:
    """Copy ``handle`` from the daemon at ``up.url`` (through ``up.proxy``); None if it does not have it."""
    base = up.url
    query = urllib.parse.urlencode({"handle": handle.asked})
    ref_doc = await _get_json(session, f"{base}/v1/refs?{query}", up.proxy)
    if ref_doc is None:
        return None
    upstream_ref = parse_upstream_ref(ref_doc, base)
    digest = upstream_ref.manifest
    manifest = await _fetch_manifest(session, up, digest, Limits.of(settings))
    sizes = {f.sha256: f.size for f in manifest.files}
    store_io = io or StoreIO(settings.stuck_io_after)
    missing = await store_io.run(_missing, store, list(sizes), what=f"look for the blobs of {handle.asked}")
    sem = asyncio.Semaphore(4)
    tls = None
    if missing and base.startswith("https://"):  # the CA files are read in a thread, not on the loop
        tls = await asyncio.to_thread(tls_context, settings)

    async def one(d: str) -> None:
        async with sem:
            await _fetch_blob_checked(store, up, d, sizes[d], store_io, tls)

    # The biggest first: it is the fill's critical path, the small ones fit in beside it.
    await asyncio.gather(*(one(d) for d in sorted(missing, key=lambda d: -sizes[d])))
    return await store_io.run(_publish, store, handle, manifest, len(missing), sum(sizes[d] for d in missing),
                              base, upstream_ref, what=f"publish {handle.asked} from upstream {base}")


async def _fetch_manifest(session: aiohttp.ClientSession, up: Attempt, digest: str, limits: Limits) -> Manifest:
    """The manifest ``digest`` from ``up``, checked like an archive before anything is written
    (a corrupt arrival is asked for once more with ``no-cache``)."""
    base = up.url
    cap = 64 * 1024 + 256 * limits.max_entries  # generous for max_entries rows; an endless answer is cut
    for headers in ({}, NO_CACHE):
        data = bytearray()
        async with session.get(f"{base}/v1/manifests/{digest}", proxy=up.proxy, headers=headers,
                               timeout=_TIMEOUT) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > cap:
                    raise UnsafeManifestError(f"upstream {base}: manifest {digest} is larger than {cap} bytes; "
                                              "refused")
        if hashlib.sha256(data).hexdigest() == digest:
            break
        if not headers:
            log.warning("upstream %s: manifest %s arrived corrupt; asking again with Cache-Control: no-cache",
                        up.describe(), digest)
    else:
        raise IntegrityError(f"upstream {base}: manifest {digest} does not match its digest")
    return parse_manifest(bytes(data), f"upstream {base} manifest {digest}", digest=digest, limits=limits)


async def fetch_from_one(
    settings: Settings, store: Store, session: aiohttp.ClientSession, up: Attempt, handle: Handle,
    io: StoreIO | None = None,
) -> Ref | None:
    """Copy ``handle`` from one upstream, by its URL's scheme; None if it does not have it.

    The one dispatch: ``http(s)://`` is another cachemgr daemon; ``oci://HOST[:PORT]/PREFIX`` is an
    OCI registry holding the models ``cachemgr push`` put there (``oci.pull.pull_from_registry``).
    """
    if up.url.startswith(("http://", "https://")):
        return await fetch_from_upstream(settings, store, session, up, handle, io)
    if up.url.startswith("oci://"):  # a registry of ModelPack artifacts (cachemgr/oci/pull.py)
        got = await pull_from_registry(settings, store, up.url, handle.asked, up.proxy)  # its group's route
        return got.ref if got is not None else None
    log.debug("upstream %s: no fetcher for this scheme yet; passed over for %s", up.describe(), handle.asked)
    return None


_DEAD = (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, CachemgrError)


async def fetch_from_upstreams(
    settings: Settings, store: Store, session: aiohttp.ClientSession, handle: Handle,
    failover: Failover | None = None, io: StoreIO | None = None,
) -> Ref | None:
    """Try the upstreams in ``failover``'s plan (random within a group, then the next group,
    dead ones skipped); the first that has the model wins. ``failover`` is the process's memory
    of dead upstreams (a fresh one when None). Blobs an upstream delivered before it failed
    stay, so the next one sends only the rest."""
    failover = failover if failover is not None else Failover()
    plan = failover.plan(settings.upstreams, settings.proxy, time.monotonic(), settings.no_proxy)
    log.info("upstreams for %s: %s", handle.asked, ", ".join(a.describe() for a in plan))
    for up in plan:
        log.info("trying upstream %s for %s", up.describe(), handle.asked)
        try:
            ref = await fetch_from_one(settings, store, session, up, handle, io)
        except _DEAD as exc:
            backoff = failover.failed(up.url, time.monotonic())
            log.warning("upstream %s failed for %s: %s; skipped for %.0f s; it was %s, trying the next",
                        up.url, handle.asked, str(exc) or type(exc).__name__, backoff, up.describe())
            continue
        if failover.succeeded(up.url):
            log.info("upstream %s is back", up.describe())
        if ref is not None:
            log.info("upstream %s had %s", up.describe(), handle.asked)
            return ref
        log.info("upstream %s does not have %s", up.describe(), handle.asked)
    return None
