"""Fetching from other cachemgr daemons (``upstreams``) through their content-addressed API.

Only the blobs this store lacks are transferred; each is verified against its sha256
before it is adopted. A dead upstream is skipped after a short connect timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import urllib.parse
from typing import Any

import aiohttp

from .catalog import record_model
from .errors import CachemgrError, IntegrityError
from .fsutil import remove_quietly
from .handles import Handle
from .ingest import IngestResult
from .manifest import Manifest
from .refs import Ref
from .settings import Settings
from .store import Store

log = logging.getLogger("cachemgr.upstream")
UPSTREAM_CONNECT_TIMEOUT = 2.0


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(sock_connect=UPSTREAM_CONNECT_TIMEOUT,
                                                               sock_read=60)) as resp:
        if resp.status == 404:
            return None
        resp.raise_for_status()
        doc: dict[str, Any] = await resp.json()
        return doc


async def _fetch_blob(session: aiohttp.ClientSession, store: Store, base: str, digest: str) -> None:
    staging = store.new_temp("upblob")
    try:
        target = staging / "blob"
        sha = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            async with session.get(f"{base}/v1/blobs/{digest}") as resp:
                resp.raise_for_status()
                async for chunk in resp.content.iter_chunked(1 << 20):
                    sha.update(chunk)
                    os.write(fd, chunk)
        finally:
            os.close(fd)
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
    digest = str(ref_doc["manifest"])
    async with session.get(f"{base}/v1/manifests/{digest}") as resp:
        resp.raise_for_status()
        data = await resp.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"upstream {base}: manifest {digest} does not match its digest")
    manifest = Manifest.from_bytes(data, f"upstream {base} manifest {digest}")
    missing = sorted(d for d in manifest.blob_digests() if not store.has_blob(d))
    sem = asyncio.Semaphore(4)

    async def one(d: str) -> None:
        async with sem:
            await _fetch_blob(session, store, base, d)

    await asyncio.gather(*(one(d) for d in missing))
    store.write_manifest(manifest)
    snapshot = store.materialize(manifest)
    result = IngestResult(manifest, digest, snapshot, None, len(missing),
                          sum(f.size for f in manifest.files if f.sha256 in set(missing)))
    learned = [str(a) for a in ref_doc.get("aliases", [])]
    return record_model(store, handle, result, source=f"upstream {base}", url=str(ref_doc.get("url", "")),
                        chain=learned, etag=ref_doc.get("etag"), x_goog_hash=ref_doc.get("x_goog_hash"),
                        archive_size=ref_doc.get("archive_size"))


async def fetch_from_upstreams(
    settings: Settings, store: Store, session: aiohttp.ClientSession, handle: Handle
) -> Ref | None:
    """Try each upstream in order; the first that has the model wins."""
    for base in settings.upstreams:
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
