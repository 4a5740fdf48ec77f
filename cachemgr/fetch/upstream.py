"""Fetching from other cachemgr daemons (``upstreams``) through their content-addressed API.

An upstream is outside this process's trust: its ref answer passes :func:`parse_upstream_ref`,
its manifest passes the same checks as an archive (``manifest.parse_manifest``) before
anything is written, and each blob this store lacks is read no further than the size the
manifest gives it and verified against its sha256 before it is adopted. A dead upstream
is skipped after a short connect timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp

from cachemgr.errors import CachemgrError, IntegrityError, UnsafeManifestError
from cachemgr.handles import Handle
from cachemgr.ingest.publish import record_model
from cachemgr.ingest.unpack import IngestResult
from cachemgr.settings import Settings
from cachemgr.store.fs import remove_quietly
from cachemgr.store.manifest import Limits, Manifest, is_digest, parse_manifest
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref

log = logging.getLogger("cachemgr.fetch.upstream")
UPSTREAM_CONNECT_TIMEOUT = 2.0


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(sock_connect=UPSTREAM_CONNECT_TIMEOUT,
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


async def _fetch_blob(session: aiohttp.ClientSession, store: Store, base: str, digest: str, size: int) -> None:
    """Fetch one blob of ``size`` bytes (the manifest's word); more or fewer bytes are refused."""
    staging = store.new_temp("upblob")
    try:
        target = staging / "blob"
        sha = hashlib.sha256()
        got = 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            async with session.get(f"{base}/v1/blobs/{digest}") as resp:
                resp.raise_for_status()
                async for chunk in resp.content.iter_chunked(1 << 20):
                    got += len(chunk)
                    if got > size:
                        break
                    sha.update(chunk)
                    os.write(fd, chunk)
        finally:
            os.close(fd)
        if got != size:
            raise IntegrityError(f"upstream {base}: blob {digest} arrived with {'more than ' if got > size else ''}"
                                 f"{got} bytes, but its manifest says {size}; the upstream is broken or hostile")
        if sha.hexdigest() != digest:
            raise IntegrityError(f"upstream {base}: blob {digest} arrived with sha256 {sha.hexdigest()}; "
                                 "the upstream store is corrupt, run cachemgr verify there")
        store.adopt_blob(target, digest)
    finally:
        remove_quietly(staging)


async def fetch_from_upstream(
    settings: Settings, store: Store, session: aiohttp.ClientSession, base: str, handle: Handle
) -> Ref | None:
    """Copy ``handle`` from the daemon at ``base``; None if it does not have it."""
    query = urllib.parse.urlencode({"handle": handle.asked})
    ref_doc = await _get_json(session, f"{base}/v1/refs?{query}")
    if ref_doc is None:
        return None
    upstream_ref = parse_upstream_ref(ref_doc, base)
    digest = upstream_ref.manifest
    manifest = await _fetch_manifest(session, base, digest, Limits.of(settings))
    sizes = {f.sha256: f.size for f in manifest.files}
    missing = sorted(d for d in sizes if not store.has_blob(d))
    sem = asyncio.Semaphore(4)

    async def one(d: str) -> None:
        async with sem:
            await _fetch_blob(session, store, base, d, sizes[d])

    await asyncio.gather(*(one(d) for d in missing))
    store.write_manifest(manifest)
    snapshot = store.materialize(manifest)
    result = IngestResult(manifest, digest, snapshot, None, len(missing),
                          sum(sizes[d] for d in missing))
    return record_model(store, handle, result, source=f"upstream {base}", url=upstream_ref.url,
                        chain=list(upstream_ref.aliases), etag=upstream_ref.etag,
                        x_goog_hash=upstream_ref.x_goog_hash, archive_size=upstream_ref.archive_size)


async def _fetch_manifest(session: aiohttp.ClientSession, base: str, digest: str, limits: Limits) -> Manifest:
    """The manifest ``digest`` from ``base``, checked like an archive before anything is written."""
    cap = 64 * 1024 + 256 * limits.max_entries  # generous for max_entries rows; an endless answer is cut
    data = bytearray()
    async with session.get(f"{base}/v1/manifests/{digest}") as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > cap:
                raise UnsafeManifestError(f"upstream {base}: manifest {digest} is larger than {cap} bytes; refused")
    if hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"upstream {base}: manifest {digest} does not match its digest")
    return parse_manifest(bytes(data), f"upstream {base} manifest {digest}", digest=digest, limits=limits)


async def fetch_from_upstreams(
    settings: Settings, store: Store, session: aiohttp.ClientSession, handle: Handle
) -> Ref | None:
    """Try each upstream in order; the first that has the model wins."""
    for base in settings.upstream_urls:
        try:
            ref = await fetch_from_upstream(settings, store, session, base, handle)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            log.warning("upstream %s skipped for %s: %s", base, handle.asked, exc)
            continue
        except CachemgrError as exc:
            log.warning("upstream %s failed for %s: %s", base, handle.asked, exc)
            continue
        if ref is not None:
            return ref
    return None
