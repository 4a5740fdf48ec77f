"""HTTP fetching the way tensorflow_hub does it, made robust.

- ``tf-hub-format=compressed`` merged into the query; redirects followed by hand so that
  every hop is recorded (the Kaggle URL behind tfhub.dev) and mirror rules apply to it;
- retries with exponential backoff on 5xx, 429 and connection errors;
- resume with ``Range`` after a broken transfer, re-resolving from the start when the
  signed storage URL has expired (403/400/410);
- md5 from ``x-goog-hash`` checked before the stream is declared complete;
- ``HTTPS_PROXY``/``NO_PROXY`` honoured (trust_env) and a custom CA bundle;
- hostile or broken servers bounded: curl's low-speed rule (``low_speed_limit`` bytes/s for
  ``low_speed_time`` s) ends a dripping transfer (retried and resumed like a broken one) and
  each wait for response headers; header lines, fields and counts are capped; a redirect's
  body is never read (so a gzip bomb on a 302 costs nothing); bytes after the end of a body
  (more than its Content-Length) and other malformed responses are refused, not retried.
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
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong

from cachemgr import __version__
from cachemgr.errors import FetchError, IntegrityError, TruncatedDownloadError
from cachemgr.fetch.lowspeed import LowSpeed, low_speed_on
from cachemgr.settings import Settings
from cachemgr.units import format_size

Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int, int | None], None]
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_HOPS = 10
_READ = 1 << 20
# Response header caps (aiohttp's defaults are 8190/8190/128): a signed storage URL in a
# Location header is 1-3 KiB, so 16 KiB a line leaves room; at most 2 MiB of headers in all.
_MAX_LINE = 16 * 1024
_MAX_HEADERS = 128
_FIX_SERVER = ("the server or a proxy in between is broken or hostile; check the URL, "
               "the mirror rules (CACHEMGR_MIRRORS) and the proxy (HTTPS_PROXY)")


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


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context with the CA bundle (``ca_bundle``, else the system's): it reads files, so
    a coroutine builds it in a thread (``open_session``)."""
    return ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)


async def open_session(settings: Settings, *, trust_env: bool = True) -> aiohttp.ClientSession:
    """``make_session`` from a coroutine: the CA files are read in a thread, not on the loop."""
    return make_session(settings, trust_env=trust_env, tls=await asyncio.to_thread(tls_context, settings))


def make_session(settings: Settings, *, trust_env: bool = True,
                 tls: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    """The session for the origin (``trust_env``: HTTP(S)_PROXY and NO_PROXY from the environment),
    or, with ``trust_env=False``, one whose every request names its own route (upstreams: each
    attempt carries the proxy its group and ``no_proxy`` chose, or none for direct)."""
    ctx = tls or tls_context(settings)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=32),
        timeout=timeout,
        trust_env=trust_env,
        auto_decompress=False,
        max_line_size=_MAX_LINE,
        max_field_size=_MAX_LINE,
        max_headers=_MAX_HEADERS,
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
        hops = [logical]
        for _hop in range(_MAX_HOPS):
            resp = await self._get(logical, headers)
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                # Released unread: a redirect's body is never read nor inflated (a gzip bomb
                # on a 302 costs nothing); the connection is closed if the body was unfinished.
                resp.release()
                logical = urllib.parse.urljoin(logical, resp.headers["Location"])
                hops.append(logical)
                chain.append(logical)
                continue
            if resp.status in (200, 206):
                if chain:
                    info.chain = chain
                info.url = logical
                return resp, logical
            await self._raise_status(resp, logical, signed=logical != start)
        where = _where(start)
        if len(set(hops)) < len(hops):
            again = _where(next(u for u in hops if hops.count(u) > 1))
            raise FetchError(
                f"{where}: redirect loop ({again} came round again; stopped after {_MAX_HOPS} hops); "
                "the server is misconfigured: check the URL and the mirror rules (CACHEMGR_MIRRORS)",
                url=where,
            )
        raise FetchError(f"{where}: more than {_MAX_HOPS} redirects; check the URL", url=where)

    async def _get(self, logical: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """One GET, no redirects; its response headers must come within ``low_speed_time``."""
        wait = self.settings.low_speed_time if low_speed_on(self.settings) else None
        deadline = asyncio.timeout(wait)
        try:
            async with deadline:
                return await self.session.get(
                    rewrite(logical, self.settings.mirrors), allow_redirects=False, headers=headers
                )
        except aiohttp.ClientResponseError as exc:
            malformed = _malformed(_where(logical), exc)
            if malformed is None:
                raise _Retry(_cannot_connect(logical, exc)) from None
            raise malformed from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if deadline.expired():
                where = _where(logical)
                raise _Retry(FetchError(
                    f"{where}: stalled: no response within {wait:g}s; retried "
                    f"{self.settings.retries} times, try again later, or if the server is just "
                    "slow raise low_speed_time (CACHEMGR_LOW_SPEED_TIME)",
                    url=where,
                )) from None
            raise _Retry(_cannot_connect(logical, exc)) from None

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
        # The parser's error is on the connection when bytes follow the end of the body.
        proto = resp.connection.protocol if resp.connection is not None else None
        watch = LowSpeed(self.settings, resp)
        try:
            async for chunk in resp.content.iter_chunked(_READ):
                watch.got += len(chunk)
                if proto is not None and resp.content.is_eof() and isinstance(proto.exception(), HttpProcessingError):
                    where = _where(info.url)
                    raise FetchError(
                        f"{where}: upstream sent bytes past the end of the body (more than its "
                        f"Content-Length); refused: {_FIX_SERVER}",
                        url=where,
                    )
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if info.x_goog_hash is not None:  # md5 only when there is one to check against
                    md5.update(chunk)
                info.size += len(chunk)
                watch.hold()  # time in the sink (disk, inflate) is not the network's
                await sink(chunk)
                watch.release()
                if progress is not None:
                    progress(info.size, total)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError) as exc:
            if watch.stalled:
                raise _Retry(self._stalled(info)) from None
            raise _Retry(TruncatedDownloadError(
                f"{info.url}: download broke off after {info.size} bytes ({exc.__class__.__name__});"
                " the server kept failing, try again later",
                url=info.url,
            )) from None
        finally:
            watch.stop()
        if watch.stalled:  # closed under the read, which may have ended as if at the end
            raise _Retry(self._stalled(info))
        if total is not None and info.size < total:
            raise _Retry(TruncatedDownloadError(
                f"{info.url}: download truncated at {info.size} of {total} bytes; try again",
                url=info.url,
            ))
        return total

    def _stalled(self, info: FetchInfo) -> TruncatedDownloadError:
        s, where = self.settings, _where(info.url)
        return TruncatedDownloadError(
            f"{where}: download stalled at {info.size} bytes: under {format_size(s.low_speed_limit)}/s "
            f"for {s.low_speed_time:g}s, resumed {s.retries} times; try again later, or if the line "
            "is just slow lower low_speed_limit or raise low_speed_time "
            "(CACHEMGR_LOW_SPEED_LIMIT, CACHEMGR_LOW_SPEED_TIME)",
            url=where,
        )


def _where(url: str) -> str:
    """``url`` without its query (signatures, tf-hub-format): what messages show."""
    return urllib.parse.urlsplit(url)._replace(query="").geturl()


def _cannot_connect(logical: str, exc: BaseException) -> FetchError:
    return FetchError(
        f"{logical}: cannot connect ({exc.__class__.__name__}: {exc}); "
        "check the network, proxy (HTTPS_PROXY) or mirror settings",
        url=logical,
    )


def _malformed(where: str, exc: aiohttp.ClientResponseError) -> FetchError | None:
    """The error for a response aiohttp's parser refused (too large, not HTTP); else None."""
    causes: list[HttpProcessingError] = []
    cause = exc.__cause__
    while isinstance(cause, HttpProcessingError):
        causes.append(cause)
        cause = cause.__cause__
    if not causes:
        return None  # e.g. a proxy that refused CONNECT: a connection problem
    if any(isinstance(c, LineTooLong) or "Too many headers" in c.message for c in causes):
        return FetchError(
            f"{where}: upstream response headers are too large (over {_MAX_LINE // 1024} KiB "
            f"a line or {_MAX_HEADERS} headers); refused: {_FIX_SERVER}",
            url=where,
        )
    inner = causes[-1]
    if isinstance(inner, BadStatusLine):
        what = "not HTTP, or bytes after the end of a body longer than its Content-Length"
    else:
        what = f"{type(inner).__name__}: {(inner.message.splitlines() or [''])[0][:80]}"
    return FetchError(f"{where}: upstream sent a malformed HTTP response ({what}); refused: {_FIX_SERVER}",
                      url=where)


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
