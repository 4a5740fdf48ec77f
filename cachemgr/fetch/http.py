"""HTTP fetching the way tensorflow_hub does it, made robust.

- ``tf-hub-format=compressed`` merged into the query; redirects followed by hand so that
  every hop is recorded (the Kaggle URL behind tfhub.dev) and mirror rules apply to it;
- retries with exponential backoff on 5xx, 429 and connection errors;
- resume with ``Range`` after a broken transfer, re-resolving from the start when the
  signed storage URL has expired (403/400/410);
- md5 from ``x-goog-hash`` checked before the stream is declared complete;
- ``HTTPS_PROXY``/``NO_PROXY`` honoured (trust_env) and a custom CA bundle.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from cachemgr import __version__
from cachemgr.errors import FetchError, IntegrityError, TruncatedDownloadError
from cachemgr.settings import Settings

Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int, int | None], None]
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_HOPS = 10
_READ = 1 << 20


@dataclass
class FetchInfo:
    url: str
    chain: list[str] = field(default_factory=list)
    etag: str | None = None
    x_goog_hash: str | None = None
    size: int = 0
    resumes: int = 0


class _Retry(Exception):
    def __init__(self, error: FetchError, reresolve: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.reresolve = reresolve


def rewrite(url: str, mirrors: tuple[tuple[str, str], ...]) -> str:
    """Apply the first (longest) matching mirror prefix rule."""
    for prefix, base in mirrors:
        if url.startswith(prefix):
            return base + url[len(prefix):]
    return url


def md5_of(x_goog_hash: str | None) -> str | None:
    """The base64 md5 in an ``x-goog-hash: crc32c=..,md5=..`` header value."""
    for part in (x_goog_hash or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "md5" and value:
            return value
    return None


def make_session(settings: Settings) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=32),
        timeout=timeout,
        trust_env=True,
        auto_decompress=False,
        headers={"User-Agent": f"cachemgr/{__version__}", "Accept-Encoding": "identity"},
    )


class Fetcher:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session

    async def fetch(self, url: str, sink: Sink, progress: Progress | None = None) -> FetchInfo:
        """Stream the body at ``url`` (after redirects) into ``sink``; returns provenance."""
        info = FetchInfo(url=url)
        md5 = hashlib.md5()
        current: str | None = None  # the last final (logical) URL, for Range resumes
        total: int | None = None
        attempt = 0
        while True:
            try:
                resp, current = await self._open(url, current, info)
                try:
                    total = await self._consume(resp, info, md5, sink, total, progress)
                finally:
                    resp.release()
                break
            except _Retry as retry:
                attempt += 1
                if attempt > self.settings.retries:
                    raise retry.error from None
                if retry.reresolve:
                    current = None
                delay = self.settings.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
                await asyncio.sleep(min(delay, 30.0))
        expected = md5_of(info.x_goog_hash)
        if expected is not None:
            got = base64.b64encode(md5.digest()).decode()
            if got != expected:
                raise IntegrityError(
                    f"{info.url}: md5 {got} does not match x-goog-hash md5 {expected}; "
                    "the download is corrupt, pull again"
                )
        return info

    async def _open(
        self, start: str, current: str | None, info: FetchInfo
    ) -> tuple[aiohttp.ClientResponse, str]:
        """GET with manual redirects; resumes at ``info.size`` from ``current`` if given."""
        logical = current or start
        chain: list[str] = [] if current else [start]
        headers = {"Range": f"bytes={info.size}-"} if info.size else {}
        for _hop in range(_MAX_HOPS):
            actual = rewrite(logical, self.settings.mirrors)
            try:
                resp = await self.session.get(actual, allow_redirects=False, headers=headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                err = FetchError(
                    f"{logical}: cannot connect ({exc.__class__.__name__}: {exc}); "
                    "check the network, proxy (HTTPS_PROXY) or mirror settings",
                    url=logical,
                )
                raise _Retry(err) from None
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                resp.release()
                logical = urllib.parse.urljoin(logical, resp.headers["Location"])
                chain.append(logical)
                continue
            if resp.status in (200, 206):
                if chain:
                    info.chain = chain
                info.url = logical
                return resp, logical
            await self._raise_status(resp, logical, signed=logical != start)
        raise FetchError(f"{start}: more than {_MAX_HOPS} redirects; check the URL", url=start)

    async def _raise_status(
        self, resp: aiohttp.ClientResponse, logical: str, signed: bool
    ) -> None:
        status = resp.status
        try:
            body = (await resp.content.read(300)).decode("utf-8", "replace")
        except (TimeoutError, aiohttp.ClientError):
            body = ""
        resp.release()
        snippet = " ".join(body.split())[:120]
        detail = f" ({snippet})" if snippet else ""
        where = urllib.parse.urlsplit(logical)._replace(query="").geturl()
        err = FetchError(f"{where}: upstream answered HTTP {status}{detail}", url=where, status=status)
        if status >= 500 or status == 429:
            err.args = (f"{err.args[0]}; retried {self.settings.retries} times, try again later",)
            raise _Retry(err)
        if signed and status in (400, 401, 403, 410):
            # An expired signed storage URL: resolve again from the handle.
            raise _Retry(err, reresolve=True)
        if status == 404:
            err.args = (f"{where}: not found upstream (HTTP 404); check the handle",)
        elif status in (401, 403):
            err.args = (f"{err.args[0]}; access denied: check credentials or the mirror",)
        raise err

    async def _consume(
        self,
        resp: aiohttp.ClientResponse,
        info: FetchInfo,
        md5: hashlib._Hash,
        sink: Sink,
        total: int | None,
        progress: Progress | None,
    ) -> int | None:
        etag = resp.headers.get("ETag")
        if info.size:
            info.resumes += 1
            if info.etag and etag and etag != info.etag:
                raise FetchError(
                    f"{info.url}: upstream content changed during the download "
                    f"(ETag {info.etag} -> {etag}); run the pull again",
                    url=info.url,
                )
            skip = info.size if resp.status == 200 else _range_skip(resp, info.size, info.url)
        else:
            skip = 0
            info.etag = etag
            info.x_goog_hash = ",".join(resp.headers.getall("x-goog-hash", [])) or None
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() and resp.status == 200 else None
        try:
            async for chunk in resp.content.iter_chunked(_READ):
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if info.x_goog_hash is not None:  # md5 only when there is one to check against
                    md5.update(chunk)
                info.size += len(chunk)
                await sink(chunk)
                if progress is not None:
                    progress(info.size, total)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise _Retry(TruncatedDownloadError(
                f"{info.url}: download broke off after {info.size} bytes ({exc.__class__.__name__});"
                " the server kept failing, try again later",
                url=info.url,
            )) from None
        if total is not None and info.size < total:
            raise _Retry(TruncatedDownloadError(
                f"{info.url}: download truncated at {info.size} of {total} bytes; try again",
                url=info.url,
            ))
        return total


def _range_skip(resp: aiohttp.ClientResponse, offset: int, url: str) -> int:
    """Bytes to drop from a 206 answer so that the stream continues at ``offset``."""
    content_range = resp.headers.get("Content-Range", "")
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        raise FetchError(f"{url}: bad Content-Range {content_range!r} on resume", url=url) from None
    if start > offset:
        raise FetchError(f"{url}: server resumed at {start}, past {offset}", url=url)
    return offset - start
