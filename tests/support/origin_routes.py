"""The fake origin's HTTP routes: tfhub.dev and Kaggle redirects, signed GCS URLs, archive bodies.

Route prefixes (``kind``)::

    /tfhub/{publisher}/{model}/{version}[/]            tfhub.dev
    /kaggle/models/{p}/{m}/frameworks/{fw}/variations/{var}/versions/{v}[/]   www.kaggle.com
    /kaggle/models/{p}/{m}/{fw}/{var}/{v}[/]           (short form)
    /gcs/kaggle-models-data/{id}/{fw}/{var}/{v}/model.tar.gz?X-Goog-...   storage.googleapis.com
    /gcscn/tfhub-modules/{publisher}/{model}/{version}.tar.gz   gcs.tensorflow.google.cn
    /hosting/{publisher}/{model}/{version}?tf-hub-format=compressed   any TF Hub-protocol host
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import parse_qs, quote, urlencode

from aiohttp import web

from .archives import HTML_ERROR_PAGE
from .origin_catalog import GCS_URL, KAGGLE_URL, KINDS, ArchiveKind, Blob, Catalog, Model
from .origin_faults import Faults
from .origin_records import Records

SIGNER = "cachemgr-fake-origin@example.iam.gserviceaccount.com"
TTL = 3600  # seconds a signed storage URL stays valid
CHUNK = 256 * 1024
XML = "application/xml; charset=UTF-8"

TFHUB_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>TensorFlow Hub</title></head>"
    b"<body><h1>%s</h1><p>Model page (fake origin).</p></body></html>\n"
)


def gcs_error(code: str, message: str, details: str = "") -> bytes:
    det = f"<Details>{details}</Details>" if details else ""
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<Error><Code>{code}</Code><Message>{message}</Message>{det}</Error>"
    ).encode()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
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


def _plain(
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


def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)


def _add_hash_headers(resp: web.StreamResponse, values: list[str]) -> None:
    for v in values:  # one x-goog-hash header per digest, as real GCS sends them
        resp.headers.add("x-goog-hash", v)


class Routes:
    """The aiohttp handler of a ``FakeOrigin``: answers from its catalog, under its faults, into its records."""

    def __init__(
        self,
        catalog: Catalog,
        faults: Faults,
        records: Records,
        base: Callable[[], str],
        local_redirects: bool,
        secret: bytes,
    ) -> None:
        self.catalog = catalog
        self.faults = faults
        self.records = records
        self.base = base
        self.local_redirects = local_redirects
        self.secret = secret
        self.stopping = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        first, _, rest = request.path.lstrip("/").partition("/")
        kind = first if first in KINDS else "unknown"
        if self.faults.down:
            self.records.record(kind, request, 0)
            return _drop(request)
        delay = self.faults.take_delay(kind)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = self.faults.take_failure(kind)
        if failure is not None:
            self.records.record(kind, request, failure.status)
            if failure.status == 0:
                return _drop(request)
            return _plain(request, failure.status, failure.body, failure.content_type, failure.headers)
        try:
            if kind == "tfhub":
                return self._tfhub(request, rest)
            if kind == "kaggle":
                return self._kaggle(request, rest)
            if kind == "gcs":
                return await self._gcs(request, rest)
            if kind == "gcscn":
                return await self._gcscn(request, rest)
            if kind == "hosting":
                return await self._hosting(request, rest)
            return self._respond(kind, request, 404, b"not found\n")
        except ConnectionError:
            return web.Response(status=499)

    def signed_location(self, m: Model) -> str:
        """A fresh signed storage URL for ``m`` (public form unless ``local_redirects``)."""
        now = self.faults.now()
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        expires = str(TTL)
        path = m.gcs_path()
        credential = f"{SIGNER}/{date[:8]}/auto/storage/goog4_request"
        query = (
            f"X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={quote(credential, safe='')}"
            f"&X-Goog-Date={date}&X-Goog-Expires={expires}&X-Goog-SignedHeaders=host"
            f"&X-Goog-Signature={self._sign(path, date, expires)}"
        )
        prefix = f"{self.base()}/gcs" if self.local_redirects else GCS_URL.rstrip("/")
        return f"{prefix}{path}?{query}"

    # -- responses
    def _respond(
        self,
        kind: str,
        request: web.Request,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.records.record(kind, request, status)
        return _plain(request, status, body, content_type, headers)

    def _redirect(self, kind: str, request: web.Request, location: str) -> web.Response:
        return self._respond(kind, request, 302, b"", "text/html", {"Location": location})

    # -- the routes
    def _tfhub(self, request: web.Request, rest: str) -> web.StreamResponse:
        m = self.catalog.by_handle(rest)
        if m is None:
            return self._respond("tfhub", request, 404, HTML_ERROR_PAGE, "text/html")
        fmt = request.query.get("tf-hub-format")
        if fmt is None:
            page = TFHUB_PAGE % f"{m.publisher}/{m.model}/{m.version}".encode()
            return self._respond("tfhub", request, 200, page, "text/html")
        if fmt != "compressed":
            return self._respond("tfhub", request, 400, b"unsupported tf-hub-format\n")
        q = urlencode({"tfhub-redirect": "true", "tf-hub-format": "compressed"})
        prefix = f"{self.base()}/kaggle/" if self.local_redirects else KAGGLE_URL
        return self._redirect("tfhub", request, f"{prefix}{m.kaggle_path()}?{q}")

    def _kaggle(self, request: web.Request, rest: str) -> web.StreamResponse:
        parts = [p for p in rest.strip("/").split("/") if p]
        m: Model | None = None
        if len(parts) == 9 and parts[0] == "models" and parts[3:8:2] == ["frameworks", "variations", "versions"]:
            m = self.catalog.by_kaggle(parts[1], parts[2], parts[4], parts[6], parts[8])
        elif len(parts) == 6 and parts[0] == "models":
            m = self.catalog.by_kaggle(*parts[1:6])
        if m is None:
            return self._respond("kaggle", request, 404, HTML_ERROR_PAGE, "text/html")
        fmt = request.query.get("tf-hub-format")
        if fmt is None:
            page = TFHUB_PAGE % f"Kaggle: {m.kaggle_path()}".encode()
            return self._respond("kaggle", request, 200, page, "text/html")
        if fmt != "compressed":
            return self._respond("kaggle", request, 400, b"unsupported tf-hub-format\n")
        return self._redirect("kaggle", request, self.signed_location(m))

    def _sign(self, path: str, date: str, expires: str) -> str:
        msg = f"{path}\n{date}\n{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    async def _gcs(self, request: web.Request, rest: str) -> web.StreamResponse:
        path = "/" + rest
        qs = parse_qs(request.query_string, keep_blank_values=True)

        def q(name: str) -> str | None:
            v = qs.get(name)
            return v[0] if v else None

        sig, date, expires = q("X-Goog-Signature"), q("X-Goog-Date"), q("X-Goog-Expires")
        if sig is None or date is None or expires is None:
            body = gcs_error(
                "AccessDenied",
                "Access denied.",
                "Anonymous caller does not have storage.objects.get access.",
            )
            return self._respond("gcs", request, 403, body, XML)
        if not hmac.compare_digest(sig, self._sign(path, date, expires)):
            body = gcs_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your Google secret key and signing method.",
            )
            return self._respond("gcs", request, 403, body, XML)
        try:
            signed_at = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
            deadline = signed_at + int(expires)
        except ValueError:
            body = gcs_error("InvalidArgument", "Invalid argument.", "Bad X-Goog-Date")
            return self._respond("gcs", request, 400, body, XML)
        if self.faults.now() >= deadline:
            at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(deadline))
            body = gcs_error(
                "ExpiredToken",
                "The provided token has expired.",
                f"Request signature expired at: {at}",
            )
            return self._respond("gcs", request, 403, body, XML)
        m = self.catalog.by_gcs_path(path)
        if m is None:
            body = gcs_error("NoSuchKey", "The specified key does not exist.")
            return self._respond("gcs", request, 404, body, XML)
        return await self._archive("gcs", request, m.blob, goog=True)

    async def _gcscn(self, request: web.Request, rest: str) -> web.StreamResponse:
        m: Model | None = None
        if rest.startswith("tfhub-modules/") and rest.endswith(".tar.gz"):
            m = self.catalog.by_handle(rest[len("tfhub-modules/") : -len(".tar.gz")])
        if m is None:
            body = gcs_error("NoSuchKey", "The specified key does not exist.")
            return self._respond("gcscn", request, 404, body, XML)
        return await self._archive("gcscn", request, m.blob, goog=True)

    async def _hosting(self, request: web.Request, rest: str) -> web.StreamResponse:
        m = self.catalog.by_handle(rest)
        if m is None:
            return self._respond("hosting", request, 404, b"not found\n")
        if request.query.get("tf-hub-format") != "compressed":
            page = TFHUB_PAGE % f"{m.publisher}/{m.model}/{m.version}".encode()
            return self._respond("hosting", request, 200, page, "text/html")
        return await self._archive("hosting", request, m.blob, goog=False)

    # -- archive bodies: ETag, Range, x-goog-hash, and the faults that cut or hold them
    async def _archive(
        self, kind: ArchiveKind, request: web.Request, blob: Blob, goog: bool
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
            md5 = hashlib.md5(blob.md5).digest() if self.faults.wrong_md5 else blob.md5
            hash_values.append(f"md5={base64.b64encode(md5).decode('ascii')}")
        inm = request.headers.get("If-None-Match")
        if inm is not None and blob.etag in [t.strip() for t in inm.split(",")]:
            return self._not_modified(kind, request, headers, hash_values)
        rng_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng_header and if_range is not None and if_range.strip() != blob.etag:
            rng_header = None
        rng = parse_range(rng_header, blob.size)
        if rng is False:
            body = gcs_error("InvalidRange", "The requested range cannot be satisfied.", rng_header or "")
            extra = {"Content-Range": f"bytes */{blob.size}"}
            return self._respond(kind, request, 416, body, XML, extra)
        if rng is None:
            status, start, end = 200, 0, blob.size
        else:
            status, (start, end) = 206, rng
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        resp = web.StreamResponse(status=status, headers=headers)
        _add_hash_headers(resp, hash_values)
        resp.content_length = end - start
        self.records.record(kind, request, status)
        if request.method == "HEAD":
            await resp.prepare(request)
            return resp
        cut = self.faults.take_cut(kind)
        hold = self.faults.take_hold(kind)
        total = end - start
        limit = total if cut is None else min(cut.after, total)
        self.records.count_started(kind)
        if total == 0:
            self.records.count_completed(kind)
        await resp.prepare(request)
        # The completed counter moves *before* the last bytes go out, so a client that has read
        # everything always sees it updated (undone if the write fails).
        sent = 0
        while True:
            if hold is not None and sent >= hold.after and not hold.event.is_set():
                while not hold.event.is_set() and not self.stopping:
                    await asyncio.sleep(0.005)
            if sent >= limit:
                break
            n = min(CHUNK, limit - sent)
            if hold is not None and sent < hold.after:
                n = min(n, hold.after - sent)
            data = blob.read(start + sent, n)
            last = sent + n == total
            if last:
                self.records.count_completed(kind)
            try:
                await resp.write(data)
            except ConnectionError:
                if last:
                    self.records.count_completed(kind, -1)
                return resp
            sent += n
        if sent < total and request.transport is not None:
            # Truncated: flush what was written, then close the connection.
            request.transport.close()
        return resp

    def _not_modified(
        self, kind: str, request: web.Request, headers: dict[str, str], hash_values: list[str]
    ) -> web.Response:
        self.records.record(kind, request, 304)
        resp = web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        _add_hash_headers(resp, hash_values)
        return resp
