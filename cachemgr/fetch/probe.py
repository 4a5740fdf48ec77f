"""Cheap upstream probes: HEAD along the redirect chain, to learn the current ETag/x-goog-hash.

Used by ``cachemgr pins`` to flag pins whose upstream content changed since they were pinned,
without downloading anything. Mirror rules apply on every hop, as for a pull.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

import aiohttp

from cachemgr.errors import CachemgrError
from cachemgr.fetch.http import make_session, md5_of, rewrite
from cachemgr.handles import parse_handle, with_compressed_query
from cachemgr.settings import Settings

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_HOPS = 10


@dataclass(frozen=True)
class Probe:
    url: str
    etag: str | None = None
    x_goog_hash: str | None = None
    error: str = ""


async def probe(settings: Settings, session: aiohttp.ClientSession, handle: str) -> Probe:
    """HEAD ``handle``'s download URL, following redirects by hand; never raises."""
    try:
        parsed = parse_handle(handle)
    except CachemgrError as err:
        return Probe(handle, error=str(err))
    logical = with_compressed_query(parsed.fetch_url) if parsed.compressed_query else parsed.fetch_url
    for _hop in range(_MAX_HOPS):
        actual = rewrite(logical, settings.mirrors)
        try:
            async with session.head(actual, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    logical = urllib.parse.urljoin(logical, resp.headers["Location"])
                    continue
                if resp.status == 200:
                    goog = ",".join(resp.headers.getall("x-goog-hash", [])) or None
                    return Probe(logical, resp.headers.get("ETag"), goog)
                return Probe(logical, error=f"upstream answered HTTP {resp.status} to HEAD {logical}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Probe(logical, error=f"cannot reach {logical} ({exc.__class__.__name__})")
    return Probe(logical, error=f"more than {_MAX_HOPS} redirects")


def probe_many(settings: Settings, handles: list[str]) -> dict[str, Probe]:
    if settings.offline or not handles:
        return {}

    async def run() -> dict[str, Probe]:
        session = make_session(settings)
        try:
            sem = asyncio.Semaphore(settings.concurrency)

            async def one(h: str) -> Probe:
                async with sem:
                    return await probe(settings, session, h)

            results = await asyncio.gather(*(one(h) for h in handles))
        finally:
            await session.close()
        return dict(zip(handles, results, strict=True))

    return asyncio.run(run())


def changed(etag: str | None, x_goog_hash: str | None, now: Probe) -> bool | None:
    """True/False if upstream content differs/matches the recorded one; None if unknowable."""
    if now.error:
        return None
    old_md5, new_md5 = md5_of(x_goog_hash), md5_of(now.x_goog_hash)
    if old_md5 and new_md5:
        return old_md5 != new_md5
    if etag and now.etag:
        return etag.strip() != now.etag.strip()
    return None
