"""A small OCI distribution client on aiohttp: blobs and manifests, streamed, in bounded memory.

Why not a library: oras-py (the well-kept Python client) is synchronous on ``requests`` and
its ``put_upload`` reads a whole blob into memory (chunked upload is opt-in and "doesn't seem
to work for all registries"); python-dxf is synchronous too. The daemon pulls on its event
loop, and model blobs are GiB-sized, so the dozen calls of the protocol are written here.

- HEAD a blob before uploading it; try a cross-repository mount when it is known elsewhere;
- a monolithic PUT for a blob up to ``CHUNK`` bytes, else PATCH chunks of ``CHUNK`` bytes,
  resumed after a broken connection from the offset the registry reports (``Range``);
- GET streams a blob into a sink, no further than its size, and checks its sha256;
- every request goes through :meth:`RegistryClient.send`, which answers a 401 (auth.py) and
  retries connection errors and 5xx with backoff. Files are read in threads.
- plain HTTP only for ``insecure_registries`` and for localhost (docker's rule);
- every request (the token server's too) goes the one route the caller gives: through an
  ``oci://`` upstream's group proxy, else ``Settings.proxy`` unless ``no_proxy`` names the
  registry (:func:`default_proxy`), else directly. Sessions read no proxy from the environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cachemgr import __version__
from cachemgr.errors import IntegrityError, RegistryAuthError, RegistryError
from cachemgr.oci.auth import Auth
from cachemgr.setting_values import masked, proxy_for
from cachemgr.settings import Settings

log = logging.getLogger("cachemgr.oci.client")
CHUNK = 64 << 20
READ = 1 << 20
_LOCAL = ("localhost", "127.0.0.1", "::1", "[::1]")
Sink = Callable[[bytes], Awaitable[None]]


def is_insecure(settings: Settings, host: str) -> bool:
    """Plain HTTP: a host (or HOST:PORT) in ``insecure_registries``, or localhost on any port."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host in settings.insecure_registries or name in settings.insecure_registries or name in _LOCAL


def default_proxy(settings: Settings, host: str) -> str | None:
    """How ``pull oci://`` and ``push`` reach ``host``: ``proxy`` (CACHEMGR_PROXY, HTTP_PROXY) unless
    ``no_proxy`` names it. An ``oci://`` upstream gets its group's route (``upstream_groups``) instead."""
    return proxy_for(host, settings.proxy, settings.no_proxy)


def make_session(settings: Settings) -> aiohttp.ClientSession:
    """A session for registries: the CA bundle and timeouts of settings. No proxy from the
    environment (``trust_env``): each request names its route, so that "direct" is direct."""
    ctx = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                    sock_read=settings.read_timeout)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=32), timeout=timeout,
                                 trust_env=False, auto_decompress=False,
                                 headers={"User-Agent": f"cachemgr/{__version__}"})


@dataclass
class Counts:
    """What travelled: the push and pull reports, and the tests' proof of dedup."""

    present: int = 0
    mounted: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    resumes: int = 0
    downloaded: int = 0
    downloaded_bytes: int = 0


async def file_chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    """``length`` bytes of ``path`` from ``start``, read in a thread, 1 MiB at a time."""
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        await asyncio.to_thread(fh.seek, start)
        left = length
        while left > 0:
            data = await asyncio.to_thread(fh.read, min(READ, left))
            if not data:
                raise RegistryError(f"{path} shrank while it was uploaded; run cachemgr verify")
            left -= len(data)
            yield data
    finally:
        await asyncio.to_thread(fh.close)


class RegistryClient:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, host: str, proxy: str | None) -> None:
        self.settings = settings
        self.session = session
        self.host = host
        self.proxy = proxy  # the HTTP proxy every request to this registry goes through; None: directly
        self.base = f"{'http' if is_insecure(settings, host) else 'https'}://{host}"
        self.auth = Auth(host, self.base, settings.registry_auth_file, proxy, settings.connect_timeout)
        self.counts = Counts()

    def _error(self, what: str, resp: aiohttp.ClientResponse, body: bytes = b"") -> RegistryError:
        detail = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
        cls = RegistryAuthError if resp.status in (401, 403) else RegistryError
        fix = "; check that this user may push and pull there" if resp.status == 403 else ""
        return cls(f"registry {self.host}: {what} answered HTTP {resp.status}{': ' + detail if detail else ''}{fix}",
                   url=str(resp.url), status=resp.status)

    async def send(self, method: str, url: str, scopes: tuple[str, ...], *, ok: tuple[int, ...],
                   headers: dict[str, str] | None = None, body: Callable[[], Any] | None = None,
                   retry: bool = True) -> aiohttp.ClientResponse:
        """One request, authenticated, retried; the caller releases the response (``async with``)."""
        attempt = 0
        answered = 0
        what = f"{method} {urllib.parse.urlsplit(url).path}"
        while True:
            sent = dict(headers or {})
            value = self.auth.header(scopes)
            if value:
                sent["Authorization"] = value
            try:
                resp = await self.session.request(method, url, headers=sent, data=body() if body else None,
                                                  allow_redirects=method in ("GET", "HEAD"), proxy=self.proxy)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if not retry or attempt >= self.settings.retries:
                    via = f" through proxy {masked(self.proxy)}" if self.proxy else ""
                    raise RegistryError(f"registry {self.host}: {what}{via} failed ({exc or type(exc).__name__}); "
                                        f"check that {'the registry and the proxy are' if via else 'the registry is'} "
                                        "up and reachable", url=url) from None
                attempt += 1
                await asyncio.sleep(self.settings.backoff * 2 ** (attempt - 1))
                continue
            if resp.status == 401 and answered < 2:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                await self.auth.answer(self.session, challenge, scopes, refused=answered == 1)
                answered += 1
                continue
            if resp.status in ok:
                return resp
            data = await resp.content.read(4096)
            resp.release()
            if retry and (resp.status >= 500 or resp.status == 429) and attempt < self.settings.retries:
                attempt += 1
                await asyncio.sleep(self.settings.backoff * 2 ** (attempt - 1))
                continue
            raise self._error(what, resp, data)

    def url(self, repo: str, tail: str) -> str:
        return f"{self.base}/v2/{repo}/{tail}"

    # -- blobs -----------------------------------------------------------------------------
    async def has_blob(self, repo: str, digest: str, scopes: tuple[str, ...]) -> bool:
        async with await self.send("HEAD", self.url(repo, f"blobs/sha256:{digest}"), scopes,
                                   ok=(200, 404)) as resp:
            return resp.status == 200

    async def _start(self, repo: str, scopes: tuple[str, ...], query: str = "") -> tuple[int, str]:
        async with await self.send("POST", self.url(repo, f"blobs/uploads/{query}"), scopes, ok=(201, 202),
                                   headers={"Content-Length": "0"}) as resp:
            return resp.status, self._location(resp)

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.host}: an upload answer has no Location; the registry is broken")
        return urllib.parse.urljoin(str(resp.url), location)

    async def push_blob(self, repo: str, path: Path, digest: str, size: int, source: str | None) -> str:
        """Make blob ``digest`` (the file ``path``) exist in ``repo``: "present", "mounted" or "uploaded"."""
        scopes = (f"repository:{repo}:pull,push",)
        if await self.has_blob(repo, digest, scopes):
            self.counts.present += 1
            return "present"
        location = None
        if source is not None and source != repo:
            mount_scopes = (*scopes, f"repository:{source}:pull")
            query = "?" + urllib.parse.urlencode({"mount": f"sha256:{digest}", "from": source})
            status, location = await self._start(repo, mount_scopes, query)
            if status == 201:
                self.counts.mounted += 1
                return "mounted"
        if location is None:
            location = (await self._start(repo, scopes))[1]
        if size <= CHUNK:
            await self._finish(location, scopes, digest, path, 0, size)
        else:
            await self._chunked(repo, location, scopes, digest, path, size)
        self.counts.uploaded += 1
        self.counts.uploaded_bytes += size
        return "uploaded"

    async def push_bytes(self, repo: str, data: bytes, digest: str) -> None:
        """A small blob from memory (a config): HEAD, else one monolithic upload."""
        scopes = (f"repository:{repo}:pull,push",)
        if await self.has_blob(repo, digest, scopes):
            return
        location = (await self._start(repo, scopes))[1]
        url = _with_query(location, digest=f"sha256:{digest}")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        async with await self.send("PUT", url, scopes, ok=(201,), headers=headers, body=lambda: data):
            return

    async def _finish(self, location: str, scopes: tuple[str, ...], digest: str, path: Path, start: int,
                      end: int) -> None:
        """The closing PUT of an upload, carrying the bytes ``start``..``end`` (none for chunked uploads)."""
        url = _with_query(location, digest=f"sha256:{digest}")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - start)}
        async with await self.send("PUT", url, scopes, ok=(201,), headers=headers,
                                   body=lambda: file_chunks(path, start, end - start)):
            return

    async def _chunked(self, repo: str, location: str, scopes: tuple[str, ...], digest: str, path: Path,
                       size: int) -> None:
        offset = 0
        failures = 0
        while offset < size:
            end = min(offset + CHUNK, size)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - offset),
                       "Content-Range": f"{offset}-{end - 1}"}
            def body(start: int = offset, stop: int = end) -> AsyncIterator[bytes]:
                return file_chunks(path, start, stop - start)

            try:
                async with await self.send("PATCH", location, scopes, ok=(202,), headers=headers, retry=False,
                                           body=body) as resp:
                    location = self._location(resp)
                offset = end
                continue
            except RegistryAuthError:
                raise
            except RegistryError as exc:
                failures += 1
                if failures > self.settings.retries:
                    raise
                broke = exc
            await asyncio.sleep(self.settings.backoff * 2 ** (failures - 1))
            offset, location = await self._resume(repo, location, scopes)
            self.counts.resumes += 1
            log.warning("registry %s: the upload of blob %s to %s broke (%s); %s", self.host, digest[:12], repo,
                        broke, f"resumed at byte {offset} of {size}" if offset else "started it again")
        await self._finish(location, scopes, digest, path, size, size)

    async def _resume(self, repo: str, location: str, scopes: tuple[str, ...]) -> tuple[int, str]:
        """Where a broken upload stands (``Range: 0-N``), or a fresh upload when the registry lost it
        or no longer trusts it (distribution answers 400 when the upload's state and size differ)."""
        async with await self.send("GET", location, scopes, ok=(204, 400, 404, 416)) as resp:
            if resp.status == 204:
                last = resp.headers.get("Range", "0-0").rpartition("-")[2]
                if last.isdigit() and int(last) > 0:
                    return int(last) + 1, self._location(resp)
        return 0, (await self._start(repo, scopes))[1]

    async def get_blob(self, repo: str, digest: str, size: int, sink: Sink) -> None:
        """Stream blob ``digest`` into ``sink``: exactly ``size`` bytes with that sha256, or an error."""
        sha = hashlib.sha256()
        got = 0
        async with await self.send("GET", self.url(repo, f"blobs/sha256:{digest}"), (f"repository:{repo}:pull",),
                                   ok=(200,)) as resp:
            async for chunk in resp.content.iter_chunked(READ):
                got += len(chunk)
                if got > size:
                    break
                sha.update(chunk)
                await sink(chunk)
        if got != size:
            raise IntegrityError(f"registry {self.host}: blob {digest} in {repo} arrived with "
                                 f"{'more than ' if got > size else ''}{got} bytes, but the artifact says {size}; "
                                 "the registry's copy is broken or was tampered with, refused")
        if sha.hexdigest() != digest:
            raise IntegrityError(f"registry {self.host}: blob {digest} in {repo} arrived with sha256 "
                                 f"{sha.hexdigest()}; the registry's copy is corrupt or was tampered with, refused")
        self.counts.downloaded += 1
        self.counts.downloaded_bytes += size

    async def read_blob(self, repo: str, digest: str, size: int, cap: int) -> bytes:
        """A small blob (a config) in memory, verified; refused over ``cap`` bytes."""
        if size > cap:
            raise RegistryError(f"registry {self.host}: blob {digest} is {size} bytes, more than {cap}; refused")
        data = bytearray()

        async def keep(chunk: bytes) -> None:
            data.extend(chunk)

        await self.get_blob(repo, digest, size, keep)
        self.counts.downloaded -= 1  # a config is not a model blob
        self.counts.downloaded_bytes -= size
        return bytes(data)

    # -- manifests -------------------------------------------------------------------------
    async def put_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        headers = {"Content-Type": media_type}
        async with await self.send("PUT", self.url(repo, f"manifests/{tag}"), (f"repository:{repo}:pull,push",),
                                   ok=(201,), headers=headers, body=lambda: body) as resp:
            return resp.headers.get("Docker-Content-Digest", "")

    async def get_manifest(self, repo: str, tag: str, accept: str, cap: int) -> bytes | None:
        """The manifest at ``tag`` (or ``sha256:...``), None if absent; its digest is checked for a digest."""
        data = bytearray()
        async with await self.send("GET", self.url(repo, f"manifests/{tag}"), (f"repository:{repo}:pull",),
                                   ok=(200, 404), headers={"Accept": accept}) as resp:
            if resp.status == 404:
                return None
            async for chunk in resp.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > cap:
                    raise RegistryError(f"registry {self.host}: manifest {repo}:{tag} is larger than {cap} "
                                        "bytes; refused")
        if tag.startswith("sha256:") and hashlib.sha256(data).hexdigest() != tag[7:]:
            raise IntegrityError(f"registry {self.host}: manifest {repo}@{tag} does not match its digest; refused")
        return bytes(data)


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
