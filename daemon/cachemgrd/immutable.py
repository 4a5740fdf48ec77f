"""Content named by its sha256 (blobs, manifests), served so that any HTTP cache can keep it.

Such an answer never changes, so it says so: ``Cache-Control: public, max-age=31536000,
immutable`` (RFC 8246: no revalidation while fresh; ``public``: a shared cache such as Squid
may store it), ``ETag: "<sha256>"`` (``If-None-Match`` gives 304) and ``Accept-Ranges: bytes``
(one ``Range`` gives 206, an unsatisfiable or malformed one 416). HEAD gives the headers only.
Each body sent is logged (``sent /v1/blobs/<d>: N of SIZE bytes from START``).

The file is opened without following any link (``open_no_follow``) and read from that
descriptor, each step a store call in a thread (``StoreIO``: reported when it hangs on a network
mount): the event loop makes no filesystem call, and a link planted
in a shared store is never served. aiohttp's ``FileResponse`` would reopen the path by name
(following links) on the loop's side and send its own mtime-based ETag.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from aiohttp import web

from cachemgr.store.aio import StoreIO
from cachemgr.store.fs import open_no_follow

log = logging.getLogger("cachemgrd")
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT_LIVED = "max-age=60"  # refs and resolve answers change (CVMFS gives its manifests minutes)
CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$", re.ASCII | re.IGNORECASE)


class Unsatisfiable(Exception):
    """A Range header this server answers with 416."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, count)`` of the one range asked for, None for the whole body (no Range, or a unit
    other than bytes, which RFC 9110 says to ignore); Unsatisfiable when malformed, several
    ranges, or outside the ``size`` bytes."""
    if header is None or not header.strip().lower().startswith("bytes="):
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise Unsatisfiable(header)
    first, last = match.group(1), match.group(2)
    if first == "":  # a suffix: the last N bytes
        count = min(int(last), size)
        if count == 0:
            raise Unsatisfiable(header)
        return size - count, count
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise Unsatisfiable(header)
    return start, end - start + 1


def etag_matches(header: str | None, digest: str) -> bool:
    """Whether an If-None-Match list names ``"<digest>"`` (weak comparison) or is ``*``."""
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or f'"{digest}"' in tags


def _open(home: Path, path: Path) -> tuple[int, int] | None:
    try:
        fd = open_no_follow(home, path)
    except OSError:
        return None
    return fd, os.fstat(fd).st_size


async def serve_immutable(request: web.Request, home: Path, path: Path, digest: str,
                          content_type: str, io: StoreIO) -> web.StreamResponse | None:
    """The file at ``path`` (below ``home``), named by ``digest``; None when there is no such
    regular file (the caller answers 404)."""
    opened = await io.run(_open, home, path, what=f"open {path.name}")
    if opened is None:
        return None
    fd, size = opened
    try:
        return await _answer(request, fd, size, digest, content_type, io)
    finally:
        io.submit(os.close, fd, what=f"close {path.name}")  # not awaited: a cancel cannot leak it


async def _answer(request: web.Request, fd: int, size: int, digest: str,
                  content_type: str, io: StoreIO) -> web.StreamResponse:
    headers = {"ETag": f'"{digest}"', "Cache-Control": IMMUTABLE, "Accept-Ranges": "bytes"}
    if etag_matches(request.headers.get("If-None-Match"), digest):
        return web.Response(status=304, headers=headers)
    if_range = request.headers.get("If-Range")
    asked = request.headers.get("Range")
    if if_range is not None and if_range.strip().startswith(('"', "W/")) and if_range.strip() != f'"{digest}"':
        asked = None  # a validator of other content: the whole body (a date is always valid here)
    try:
        span = byte_range(asked, size)
    except Unsatisfiable:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, count = span if span is not None else (0, size)
    resp = web.StreamResponse(status=206 if span is not None else 200,
                              headers={**headers, "Content-Type": content_type})
    if span is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
    resp.content_length = count
    await resp.prepare(request)
    if request.method != "HEAD":
        offset, end = start, start + count
        while offset < end:
            chunk = await io.run(os.pread, fd, min(CHUNK, end - offset), offset, what=f"read {digest}")
            if not chunk:
                break  # the file shrank under us: the client sees a short body and retries
            await resp.write(chunk)
            offset += len(chunk)
        # One line per body sent (a site counts what its nodes, or their Squid, took from it).
        log.info("sent %s: %d of %d bytes from %d", request.path, offset - start, size, start)
    await resp.write_eof()
    return resp
