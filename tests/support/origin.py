"""A fake TF Hub origin: tfhub.dev -> www.kaggle.com -> signed storage.googleapis.com URL.

One real aiohttp server on 127.0.0.1 (random free port) in a background thread with its own
event loop. Route prefixes (``kind``)::

    /tfhub/{publisher}/{model}/{version}[/]            tfhub.dev
    /kaggle/models/{p}/{m}/frameworks/{fw}/variations/{var}/versions/{v}[/]   www.kaggle.com
    /kaggle/models/{p}/{m}/{fw}/{var}/{v}[/]           (short form)
    /gcs/kaggle-models-data/{id}/{fw}/{var}/{v}/model.tar.gz?X-Goog-...   storage.googleapis.com
    /gcscn/tfhub-modules/{publisher}/{model}/{version}.tar.gz   gcs.tensorflow.google.cn
    /hosting/{publisher}/{model}/{version}?tf-hub-format=compressed   any TF Hub-protocol host

By default redirect ``Location`` headers carry the REAL public URLs (https://www.kaggle.com/...,
https://storage.googleapis.com/...), to be mapped back onto this server with ``mirrors``
(``"PUBLIC_PREFIX={base}/kind/ ..."``) or ``rewrite()``. With ``local_redirects=True`` they
point at ``{base}/kaggle/...`` and ``{base}/gcs/...`` so plain urllib / tensorflow_hub follow
them unaided.

Usage::

    with FakeOrigin() as origin:
        origin.add_model("google", "mymul", 1, archive)
        url = f"{origin.base}/tfhub/google/mymul/1?tf-hub-format=compressed"

Knobs (thread-safe, read by the next requests): ``ttl``, ``fail()``, ``truncate()``,
``hold()``, ``delay()``, ``no_range``, ``wrong_md5``, ``omit_md5``, ``down``, ``serve_body()``,
``throttle_bps``, ``redirect_status``, ``expired_status``, ``goog_hash_style``, ``advance()``.
``reset()`` clears them all; ``reset_counters()`` clears ``requests`` and the counters.

Counters: ``requests`` (list of ``Request`` tuples ``(kind, method, path_qs, range, status)``,
status 0 = connection dropped), ``started(kind)`` / ``completed(kind)`` (archive bodies on
GET: begun / fully sent, 200 and 206 alike; HEAD, errors and 304/416 do not count),
``downloads(kind)`` (= ``started``) and ``bytes_sent(kind)``.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Protocol, TypeVar
from urllib.parse import parse_qs, quote, urlencode

from aiohttp import web

from .archives import HTML_ERROR_PAGE
from .crc32c import HAVE_NATIVE, crc32c

Kind = Literal["tfhub", "kaggle", "gcs", "hosting", "gcscn"]
ArchiveKind = Literal["gcs", "hosting", "gcscn"]
KINDS: tuple[Kind, ...] = ("tfhub", "kaggle", "gcs", "hosting", "gcscn")
ARCHIVE_KINDS: tuple[ArchiveKind, ...] = ("gcs", "hosting", "gcscn")

TFHUB_URL = "https://tfhub.dev/"
KAGGLE_URL = "https://www.kaggle.com/"
GCS_URL = "https://storage.googleapis.com/"
GCSCN_URL = "https://gcs.tensorflow.google.cn/"
GCS_BUCKET = "kaggle-models-data"
SIGNER = "cachemgr-fake-origin@example.iam.gserviceaccount.com"

# Without a native crc32c, hashing bigger archives in pure Python is too slow; omit crc32c.
PURE_PY_CRC32C_LIMIT = 16 * 1024 * 1024
CHUNK = 256 * 1024

TFHUB_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>TensorFlow Hub</title></head>"
    b"<body><h1>%s</h1><p>Model page (fake origin).</p></body></html>\n"
)


class Request(NamedTuple):
    """One handled request: ``(kind, method, path_qs, range_header_or_None, status)``."""

    kind: str
    method: str
    path_qs: str
    range: str | None
    status: int


class _Blob:
    """Archive bytes (in memory or a file) plus lazily computed digests."""

    def __init__(self, data: bytes | Path) -> None:
        self.data = data
        if isinstance(data, Path):
            self.size = data.stat().st_size
        else:
            self.size = len(data)
        md5 = hashlib.md5()
        for chunk in self.iter_range(0, self.size):
            md5.update(chunk)
        self.md5 = md5.digest()
        self.etag = f'"{md5.hexdigest()}"'
        self._crc: str | None = None
        self._crc_done = False
        self.generation = str(time.time_ns() // 1000)
        self.last_modified = formatdate(time.time(), usegmt=True)

    def iter_range(self, start: int, end: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield bytes ``[start, end)`` in chunks."""
        if isinstance(self.data, Path):
            with self.data.open("rb") as f:
                f.seek(start)
                pos = start
                while pos < end:
                    b = f.read(min(chunk, end - pos))
                    if not b:
                        return
                    pos += len(b)
                    yield b
        else:
            view = memoryview(self.data)
            for pos in range(start, end, chunk):
                yield bytes(view[pos : min(end, pos + chunk)])

    def read(self, start: int, n: int) -> bytes:
        return b"".join(self.iter_range(start, start + n))

    def crc32c_b64(self) -> str | None:
        if not self._crc_done:
            if HAVE_NATIVE or self.size <= PURE_PY_CRC32C_LIMIT:
                crc = 0
                for chunk in self.iter_range(0, self.size):
                    crc = crc32c(chunk, crc)
                self._crc = base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")
            self._crc_done = True
        return self._crc


@dataclass
class _Model:
    publisher: str
    model: str
    version: str
    framework: str
    variation: str
    kaggle_model: str
    id: int
    blob: _Blob
    overrides: dict[str, _Blob] = field(default_factory=dict)

    def gcs_path(self) -> str:
        return (
            f"/{GCS_BUCKET}/{self.id}/{self.framework}/{self.variation}/{self.version}/model.tar.gz"
        )

    def kaggle_path(self) -> str:
        return (
            f"models/{self.publisher}/{self.kaggle_model}/frameworks/{self.framework}"
            f"/variations/{self.variation}/versions/{self.version}"
        )


class _Queued(Protocol):
    remaining: int | None


_Q = TypeVar("_Q", bound=_Queued)


@dataclass
class _Delay:
    seconds: float
    remaining: int | None


@dataclass
class _Failure:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    remaining: int | None  # None = forever


@dataclass
class _Cut:
    after: int
    remaining: int | None


@dataclass
class _Hold:
    after: int
    event: threading.Event
    remaining: int | None


class FakeOrigin:
    """Fake tfhub.dev / Kaggle / GCS origin; see the module docstring."""

    def __init__(
        self,
        *,
        local_redirects: bool = False,
        ttl: int = 3600,
        secret: bytes | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.local_redirects = local_redirects
        self.host = host
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._lock = threading.RLock()
        self._models: dict[tuple[str, str, str], _Model] = {}
        self._next_id = 1000
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._port = 0
        # knobs
        self.ttl = ttl
        self.no_range = False
        self.wrong_md5 = False
        self.omit_md5 = False
        self.down = False
        self.throttle_bps: int | None = None
        self.redirect_status = 302
        self.expired_status = 403
        self.goog_hash_style: Literal["split", "combined"] = "split"
        self._clock_offset = 0.0
        self._fails: dict[str, list[_Failure]] = {}
        self._cuts: dict[str, list[_Cut]] = {}
        self._holds: dict[str, list[_Hold]] = {}
        self._delays: dict[str, list[_Delay]] = {}
        # counters
        self.requests: list[Request] = []
        self._started: dict[str, int] = {}
        self._completed: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOrigin:
        """Start the server thread (idempotent); returns ``self``."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []
        self._stopping = False

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(sock, ready))
            except BaseException as e:  # reported to start()
                errors.append(e)
                ready.set()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                sock.close()

        self._thread = threading.Thread(target=run, name=f"FakeOrigin:{self._port}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("FakeOrigin failed to start") from errors[0]
        return self

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        self._stop_event = asyncio.Event()
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        """Stop the server and join its thread (idempotent)."""
        thread, loop, ev = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        self._stopping = True
        with self._lock:
            for holds in self._holds.values():
                for h in holds:
                    h.event.set()
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass
        thread.join(15)
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> FakeOrigin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeOrigin not started")
        return self._port

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def mirror_map(self) -> dict[str, str]:
        """Public URL prefix -> local prefix."""
        b = self.base
        return {
            TFHUB_URL: f"{b}/tfhub/",
            KAGGLE_URL: f"{b}/kaggle/",
            GCS_URL: f"{b}/gcs/",
            GCSCN_URL: f"{b}/gcscn/",
        }

    @property
    def mirrors(self) -> str:
        """``"https://tfhub.dev/={base}/tfhub/ https://www.kaggle.com/={base}/kaggle/ ..."``."""
        return " ".join(f"{k}={v}" for k, v in self.mirror_map.items())

    def rewrite(self, url: str) -> str:
        """Map a public URL onto this server (identity for other URLs)."""
        for public, local in self.mirror_map.items():
            if url.startswith(public):
                return local + url[len(public) :]
        return url

    def handle(self, publisher: str, model: str, version: int | str) -> str:
        """The public handle ``https://tfhub.dev/{publisher}/{model}/{version}``."""
        return f"{TFHUB_URL}{publisher}/{model}/{version}"

    def local_handle(self, publisher: str, model: str, version: int | str) -> str:
        """``{base}/tfhub/{publisher}/{model}/{version}`` (usable by hub.load directly)."""
        return f"{self.base}/tfhub/{publisher}/{model}/{version}"

    def hosting_url(self, publisher: str, model: str, version: int | str) -> str:
        return f"{self.base}/hosting/{publisher}/{model}/{version}"

    def gcscn_url(self, publisher: str, model: str, version: int | str) -> str:
        """Local URL of ``https://gcs.tensorflow.google.cn/tfhub-modules/p/m/v.tar.gz``."""
        return f"{self.base}/gcscn/tfhub-modules/{publisher}/{model}/{version}.tar.gz"

    def signed_url(self, publisher: str, model: str, version: int | str) -> str:
        """A fresh signed URL (public form unless ``local_redirects``) for a model."""
        m = self._get(publisher, model, version)
        return self._signed_location(m)

    # ------------------------------------------------------------------ models

    def add_model(
        self,
        publisher: str,
        model: str,
        version: int | str,
        archive: bytes | Path,
        framework: str = "tensorFlow2",
        variation: str | None = None,
        kaggle_model: str | None = None,
    ) -> None:
        """Register (or replace: new ETag, same id) a model's archive.

        ``model`` may contain ``/`` (like ``imagenet/mobilenet_v2_100_224/classification``);
        the Kaggle slug (``kaggle_model``) then defaults to it with ``/`` -> ``-``, and
        ``variation`` defaults to that slug (= ``model`` for plain names). ``archive`` may
        be a ``Path`` (served from disk; for big benchmark archives).
        """
        key = (publisher, model, str(version))
        slug = kaggle_model if kaggle_model is not None else model.replace("/", "-")
        blob = _Blob(archive)
        with self._lock:
            old = self._models.get(key)
            if old is not None:
                mid = old.id
            else:
                mid = self._next_id
                self._next_id += 1
            self._models[key] = _Model(
                publisher=publisher,
                model=model,
                version=str(version),
                framework=framework,
                variation=variation if variation is not None else slug,
                kaggle_model=slug,
                id=mid,
                blob=blob,
            )

    def remove_model(self, publisher: str, model: str, version: int | str) -> None:
        with self._lock:
            self._models.pop((publisher, model, str(version)), None)

    def serve_body(
        self,
        kind: ArchiveKind,
        publisher: str,
        model: str,
        version: int | str,
        body: bytes | None,
    ) -> None:
        """Serve ``body`` instead of the archive on ``kind`` routes (``None`` restores)."""
        m = self._get(publisher, model, version)
        with self._lock:
            if body is None:
                m.overrides.pop(kind, None)
            else:
                m.overrides[kind] = _Blob(body)

    def archive(self, publisher: str, model: str, version: int | str) -> bytes:
        """The registered archive bytes (not ``serve_body`` overrides)."""
        blob = self._get(publisher, model, version).blob
        return blob.read(0, blob.size)

    def etag(self, publisher: str, model: str, version: int | str) -> str:
        """The quoted ETag (``"<md5 hex>"``) the archive routes send for this model."""
        return self._get(publisher, model, version).blob.etag

    def _get(self, publisher: str, model: str, version: int | str) -> _Model:
        with self._lock:
            return self._models[(publisher, model, str(version))]

    # ------------------------------------------------------------------ knobs

    def fail(
        self,
        kind: Kind,
        status: int,
        times: int | None = 1,
        body: bytes = b"",
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` (None = all, until ``reset``) requests of ``kind`` get ``status``.

        ``status=0`` drops the connection without a response. Use status 200 with
        ``html_error_page()`` and ``content_type="text/html"`` for a captive-portal page.
        Failures queue up in order.
        """
        with self._lock:
            self._fails.setdefault(kind, []).append(
                _Failure(status, body, content_type, dict(headers or {}), times)
            )

    def truncate(self, kind: ArchiveKind, after_bytes: int, times: int | None = 1) -> None:
        """The next ``times`` archive bodies of ``kind`` stop after ``after_bytes`` bytes.

        Headers carry the full Content-Length (of the range for 206), then ``after_bytes``
        bytes are sent and the connection is closed.
        """
        with self._lock:
            self._cuts.setdefault(kind, []).append(_Cut(after_bytes, times))

    def hold(
        self, kind: ArchiveKind, after_bytes: int = 0, times: int | None = 1
    ) -> threading.Event:
        """The next ``times`` archive bodies of ``kind`` pause after ``after_bytes`` bytes
        (headers already sent) until the returned event is set (``stop()`` sets it too)."""
        ev = threading.Event()
        with self._lock:
            self._holds.setdefault(kind, []).append(_Hold(after_bytes, ev, times))
        return ev

    def delay(self, kind: Kind, seconds: float, times: int | None = 1) -> None:
        """Sleep ``seconds`` before answering the next ``times`` requests of ``kind``."""
        with self._lock:
            self._delays.setdefault(kind, []).append(_Delay(seconds, times))

    def advance(self, seconds: float) -> None:
        """Move the server clock forward (signed URLs issued earlier expire)."""
        with self._lock:
            self._clock_offset += seconds

    def now(self) -> float:
        return time.time() + self._clock_offset

    def reset(self) -> None:
        """Clear every knob (models stay registered; counters stay, see reset_counters)."""
        with self._lock:
            for holds in self._holds.values():
                for h in holds:
                    h.event.set()
            self._fails.clear()
            self._cuts.clear()
            self._holds.clear()
            self._delays.clear()
            self._clock_offset = 0.0
            for m in self._models.values():
                m.overrides.clear()
        self.no_range = self.wrong_md5 = self.omit_md5 = self.down = False
        self.throttle_bps = None
        self.redirect_status = 302
        self.expired_status = 403
        self.goog_hash_style = "split"

    # ------------------------------------------------------------------ counters

    def started(self, kind: ArchiveKind = "gcs") -> int:
        """Archive bodies (200 or 206, GET) whose sending began."""
        with self._lock:
            return self._started.get(kind, 0)

    def completed(self, kind: ArchiveKind = "gcs") -> int:
        """Archive bodies (200 or 206, GET) sent to the last byte."""
        with self._lock:
            return self._completed.get(kind, 0)

    def downloads(self, kind: ArchiveKind = "gcs") -> int:
        """Same as ``started(kind)``: every archive body begun, ranged or not."""
        return self.started(kind)

    def bytes_sent(self, kind: ArchiveKind = "gcs") -> int:
        """Archive body bytes written for ``kind``."""
        with self._lock:
            return self._bytes.get(kind, 0)

    def requests_of(self, kind: Kind) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self._started.clear()
            self._completed.clear()
            self._bytes.clear()

    # ------------------------------------------------------------------ internals

    def _take(self, table: dict[str, list[_Q]], kind: str) -> _Q | None:
        """Pop one use of the first queued knob for ``kind`` (None if there is none)."""
        with self._lock:
            queue = table.get(kind)
            if not queue:
                return None
            item = queue[0]
            if item.remaining is not None:
                item.remaining -= 1
                if item.remaining <= 0:
                    queue.pop(0)
            return item

    def _record(self, kind: str, request: web.Request, status: int) -> None:
        with self._lock:
            self.requests.append(
                Request(kind, request.method, request.path_qs, request.headers.get("Range"), status)
            )

    def _bump(self, table: dict[str, int], kind: str, n: int = 1) -> None:
        with self._lock:
            table[kind] = table.get(kind, 0) + n

    def _drop(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        first, _, rest = path.lstrip("/").partition("/")
        kind = first if first in KINDS else "unknown"
        if self.down:
            self._record(kind, request, 0)
            return self._drop(request)
        delay = self._take(self._delays, kind)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = self._take(self._fails, kind)
        if failure is not None:
            self._record(kind, request, failure.status)
            if failure.status == 0:
                return self._drop(request)
            return self._plain(
                request, failure.status, failure.body, failure.content_type, failure.headers
            )
        try:
            if kind == "tfhub":
                return await self._tfhub(request, rest)
            if kind == "kaggle":
                return await self._kaggle(request, rest)
            if kind == "gcs":
                return await self._gcs(request, rest)
            if kind == "gcscn":
                return await self._gcscn(request, rest)
            if kind == "hosting":
                return await self._hosting(request, rest)
            return self._respond(kind, request, 404, b"not found\n")
        except ConnectionError:
            return web.Response(status=499)

    def _plain(
        self,
        request: web.Request,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        hdrs = {"Content-Type": content_type, **(headers or {})}
        if request.method == "HEAD":
            hdrs["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=hdrs)
        return web.Response(status=status, body=body, headers=hdrs)

    def _respond(
        self,
        kind: str,
        request: web.Request,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self._record(kind, request, status)
        return self._plain(request, status, body, content_type, headers)

    def _redirect(self, kind: str, request: web.Request, location: str) -> web.Response:
        return self._respond(
            kind, request, self.redirect_status, b"", "text/html", {"Location": location}
        )

    @staticmethod
    def _parse_handle(rest: str) -> tuple[str, str, str] | None:
        parts = [p for p in rest.strip("/").split("/") if p]
        if len(parts) < 3:
            return None
        return parts[0], "/".join(parts[1:-1]), parts[-1]

    async def _tfhub(self, request: web.Request, rest: str) -> web.StreamResponse:
        key = self._parse_handle(rest)
        with self._lock:
            m = self._models.get(key) if key else None
        if m is None:
            return self._respond("tfhub", request, 404, HTML_ERROR_PAGE, "text/html")
        fmt = request.query.get("tf-hub-format")
        if fmt is None:
            page = TFHUB_PAGE % f"{m.publisher}/{m.model}/{m.version}".encode()
            return self._respond("tfhub", request, 200, page, "text/html")
        if fmt != "compressed":
            return self._respond("tfhub", request, 400, b"unsupported tf-hub-format\n")
        q = urlencode({"tfhub-redirect": "true", "tf-hub-format": "compressed"})
        prefix = f"{self.base}/kaggle/" if self.local_redirects else KAGGLE_URL
        return self._redirect("tfhub", request, f"{prefix}{m.kaggle_path()}?{q}")

    def _find_kaggle(self, p: str, slug: str, fw: str, var: str, v: str) -> _Model | None:
        with self._lock:
            for m in self._models.values():
                if (m.publisher, m.kaggle_model, m.variation, m.version) == (p, slug, var, v) and (
                    m.framework.lower() == fw.lower()
                ):
                    return m
        return None

    async def _kaggle(self, request: web.Request, rest: str) -> web.StreamResponse:
        parts = [p for p in rest.strip("/").split("/") if p]
        m: _Model | None = None
        if (
            len(parts) == 9
            and parts[0] == "models"
            and parts[3:8:2]
            == [
                "frameworks",
                "variations",
                "versions",
            ]
        ):
            m = self._find_kaggle(parts[1], parts[2], parts[4], parts[6], parts[8])
        elif len(parts) == 6 and parts[0] == "models":
            m = self._find_kaggle(*parts[1:6])
        if m is None:
            return self._respond("kaggle", request, 404, HTML_ERROR_PAGE, "text/html")
        fmt = request.query.get("tf-hub-format")
        if fmt is None:
            page = TFHUB_PAGE % f"Kaggle: {m.kaggle_path()}".encode()
            return self._respond("kaggle", request, 200, page, "text/html")
        if fmt != "compressed":
            return self._respond("kaggle", request, 400, b"unsupported tf-hub-format\n")
        return self._redirect("kaggle", request, self._signed_location(m))

    def _sign(self, path: str, date: str, expires: str) -> str:
        msg = f"{path}\n{date}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def _signed_location(self, m: _Model) -> str:
        now = self.now()
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        expires = str(int(self.ttl))
        path = m.gcs_path()
        credential = f"{SIGNER}/{date[:8]}/auto/storage/goog4_request"
        query = (
            f"X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={quote(credential, safe='')}"
            f"&X-Goog-Date={date}&X-Goog-Expires={expires}&X-Goog-SignedHeaders=host"
            f"&X-Goog-Signature={self._sign(path, date, expires)}"
        )
        prefix = f"{self.base}/gcs" if self.local_redirects else GCS_URL.rstrip("/")
        return f"{prefix}{path}?{query}"

    @staticmethod
    def _gcs_error(code: str, message: str, details: str = "") -> bytes:
        det = f"<Details>{details}</Details>" if details else ""
        return (
            "<?xml version='1.0' encoding='UTF-8'?>"
            f"<Error><Code>{code}</Code><Message>{message}</Message>{det}</Error>"
        ).encode()

    async def _gcs(self, request: web.Request, rest: str) -> web.StreamResponse:
        path = "/" + rest
        qs = parse_qs(request.query_string, keep_blank_values=True)

        def q(name: str) -> str | None:
            v = qs.get(name)
            return v[0] if v else None

        sig, date, expires = q("X-Goog-Signature"), q("X-Goog-Date"), q("X-Goog-Expires")
        xml = "application/xml; charset=UTF-8"
        if sig is None or date is None or expires is None:
            body = self._gcs_error(
                "AccessDenied",
                "Access denied.",
                "Anonymous caller does not have storage.objects.get access.",
            )
            return self._respond("gcs", request, 403, body, xml)
        if not hmac.compare_digest(sig, self._sign(path, date, expires)):
            body = self._gcs_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your Google secret key and signing method.",
            )
            return self._respond("gcs", request, 403, body, xml)
        try:
            signed_at = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
            deadline = signed_at + int(expires)
        except ValueError:
            body = self._gcs_error("InvalidArgument", "Invalid argument.", "Bad X-Goog-Date")
            return self._respond("gcs", request, 400, body, xml)
        if self.now() >= deadline:
            at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(deadline))
            body = self._gcs_error(
                "ExpiredToken",
                "The provided token has expired.",
                f"Request signature expired at: {at}",
            )
            return self._respond("gcs", request, self.expired_status, body, xml)
        with self._lock:
            m = next((x for x in self._models.values() if x.gcs_path() == path), None)
        if m is None:
            body = self._gcs_error("NoSuchKey", "The specified key does not exist.")
            return self._respond("gcs", request, 404, body, xml)
        return await self._archive("gcs", request, m.overrides.get("gcs", m.blob), goog=True)

    async def _gcscn(self, request: web.Request, rest: str) -> web.StreamResponse:
        xml = "application/xml; charset=UTF-8"
        m: _Model | None = None
        if rest.startswith("tfhub-modules/") and rest.endswith(".tar.gz"):
            key = self._parse_handle(rest[len("tfhub-modules/") : -len(".tar.gz")])
            with self._lock:
                m = self._models.get(key) if key else None
        if m is None:
            body = self._gcs_error("NoSuchKey", "The specified key does not exist.")
            return self._respond("gcscn", request, 404, body, xml)
        return await self._archive("gcscn", request, m.overrides.get("gcscn", m.blob), goog=True)

    async def _hosting(self, request: web.Request, rest: str) -> web.StreamResponse:
        key = self._parse_handle(rest)
        with self._lock:
            m = self._models.get(key) if key else None
        if m is None:
            return self._respond("hosting", request, 404, b"not found\n")
        if request.query.get("tf-hub-format") != "compressed":
            page = TFHUB_PAGE % f"{m.publisher}/{m.model}/{m.version}".encode()
            return self._respond("hosting", request, 200, page, "text/html")
        blob = m.overrides.get("hosting", m.blob)
        return await self._archive("hosting", request, blob, goog=False)

    @staticmethod
    def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
        """``(start, end_exclusive)``, ``None`` (ignore: serve all) or ``False`` (416)."""
        if not header or not header.startswith("bytes=") or "," in header:
            return None
        spec = header[len("bytes=") :].strip()
        first, sep, last = spec.partition("-")
        if not sep:
            return None
        try:
            if first == "":
                n = int(last)
                if n <= 0:
                    return False
                return max(0, size - n), size
            start = int(first)
            end = int(last) + 1 if last else size
        except ValueError:
            return None
        if start < 0 or (last and end <= start):
            return None
        if start >= size:
            return False
        return start, min(end, size)

    async def _archive(
        self, kind: ArchiveKind, request: web.Request, blob: _Blob, goog: bool
    ) -> web.StreamResponse:
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": blob.etag,
            "Last-Modified": blob.last_modified,
            "Cache-Control": "private, max-age=0",
        }
        hash_values: list[str] = []
        if goog:
            headers.update(
                {
                    "x-goog-generation": blob.generation,
                    "x-goog-metageneration": "1",
                    "x-goog-stored-content-encoding": "identity",
                    "x-goog-stored-content-length": str(blob.size),
                    "x-goog-storage-class": "STANDARD",
                }
            )
            crc = blob.crc32c_b64()
            if crc is not None:
                hash_values.append(f"crc32c={crc}")
            if not self.omit_md5:
                md5 = hashlib.md5(blob.md5).digest() if self.wrong_md5 else blob.md5
                hash_values.append(f"md5={base64.b64encode(md5).decode('ascii')}")
        inm = request.headers.get("If-None-Match")
        if inm is not None and blob.etag in [t.strip() for t in inm.split(",")]:
            return self._send_headers_only(kind, request, 304, headers, hash_values)
        rng_header = None if self.no_range else request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng_header and if_range is not None and if_range.strip() != blob.etag:
            rng_header = None
        rng = self._parse_range(rng_header, blob.size)
        if rng is False:
            body = self._gcs_error(
                "InvalidRange", "The requested range cannot be satisfied.", rng_header or ""
            )
            extra = {"Content-Range": f"bytes */{blob.size}"}
            return self._respond(kind, request, 416, body, "application/xml; charset=UTF-8", extra)
        if rng is None:
            status, start, end = 200, 0, blob.size
        else:
            status, (start, end) = 206, rng
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        resp = web.StreamResponse(status=status, headers=headers)
        self._add_hash_headers(resp, hash_values)
        resp.content_length = end - start
        self._record(kind, request, status)
        if request.method == "HEAD":
            await resp.prepare(request)
            return resp
        cut = self._take(self._cuts, kind)
        hold = self._take(self._holds, kind)
        limit = end - start if cut is None else min(cut.after, end - start)
        self._bump(self._started, kind)
        if end == start:
            self._bump(self._completed, kind)
        await resp.prepare(request)
        bps = self.throttle_bps
        chunk = CHUNK if not bps else max(1024, min(CHUNK, bps // 20))
        # Counters move *before* the bytes go out, so a client that has read everything
        # always sees them updated (undone if the write fails).
        total = end - start
        sent = 0
        while True:
            if hold is not None and sent >= hold.after and not hold.event.is_set():
                while not hold.event.is_set() and not self._stopping:
                    await asyncio.sleep(0.005)
            if sent >= limit:
                break
            n = min(chunk, limit - sent)
            if hold is not None and sent < hold.after:
                n = min(n, hold.after - sent)
            data = blob.read(start + sent, n)
            last = sent + n == total
            self._bump(self._bytes, kind, n)
            if last:
                self._bump(self._completed, kind)
            try:
                await resp.write(data)
            except ConnectionError:
                self._bump(self._bytes, kind, -n)
                if last:
                    self._bump(self._completed, kind, -1)
                return resp
            sent += n
            if bps:
                await asyncio.sleep(n / bps)
        if sent < total and request.transport is not None:
            # Truncated: flush what was written, then close the connection.
            request.transport.close()
        return resp

    def _add_hash_headers(self, resp: web.StreamResponse, values: list[str]) -> None:
        if not values:
            return
        if self.goog_hash_style == "combined":
            resp.headers["x-goog-hash"] = ",".join(values)
        else:
            for v in values:
                resp.headers.add("x-goog-hash", v)

    def _send_headers_only(
        self,
        kind: str,
        request: web.Request,
        status: int,
        headers: dict[str, str],
        hash_values: list[str],
    ) -> web.Response:
        self._record(kind, request, status)
        headers = {k: v for k, v in headers.items() if k != "Content-Type" or status != 304}
        resp = web.Response(status=status, headers=headers)
        self._add_hash_headers(resp, hash_values)
        return resp
