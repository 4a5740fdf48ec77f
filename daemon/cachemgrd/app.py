"""The aiohttp application: versioned JSON API, metrics, and mirror serving."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from cachemgr import __version__
from cachemgr.errors import CachemgrError, FetchError, HandleError, NotCachedError
from cachemgr.handles import parse_handle
from cachemgr.oci.reference import is_oci
from cachemgr.settings import Settings
from cachemgr.store.aio import StoreIO
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex
from cachemgrd.forward import VIA_HEADER, client_is_tcp
from cachemgrd.frontdoor import body_deadline
from cachemgrd.hitpath import Resolved, mark_used
from cachemgrd.httperrors import error_response, plain_error
from cachemgrd.immutable import SHORT_LIVED, serve_immutable
from cachemgrd.logs import MIRRORED
from cachemgrd.metrics import render
from cachemgrd.mirror_tar import gzip_chunks, tar_chunks, tar_size
from cachemgrd.state import DaemonState
from cachemgrd.storeio import health_doc

log = logging.getLogger("cachemgrd")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Serving(Protocol):
    """What the handlers that both the primary and its workers run need of their state."""

    settings: Settings
    store: Store
    index: RefIndex
    io: StoreIO  # every store call of a handler goes through it (never on the event loop)

    async def resolve(self, text: str, offline: bool = False) -> Resolved: ...

    def served(self) -> None:
        """Count a model served by another way than resolve (a mirror tar, a ref for another daemon)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class WorkerTotals(Protocol):
    """The primary's view of its workers (``daemon.workers.WorkerPool``)."""

    def totals(self) -> dict[str, int]: ...

    def pids(self) -> list[int]: ...


STATE = web.AppKey("state", Serving)
PRIMARY = web.AppKey("primary", DaemonState)  # only in the primary's app
WORKERS = web.AppKey("workers", WorkerTotals)  # only in the primary's app, when it has workers
INTERNAL_SOCKET = web.AppKey("internal_socket", str)  # the private socket workers forward to


def _is_tcp(request: web.Request) -> bool:
    """Whether the client is on TCP: its own connection, or (forwarded) the worker's word for it."""
    if client_is_tcp(request):
        return True
    internal = request.app.get(INTERNAL_SOCKET)
    if internal is None or request.transport is None:
        return False
    return bool(request.transport.get_extra_info("sockname") == internal
                and request.headers.get(VIA_HEADER) == "tcp")


def _check_token(request: web.Request) -> web.Response | None:
    """Mutating endpoints over TCP need the bearer token; the Unix socket is gated by its mode."""
    if not _is_tcp(request):
        return None
    token = request.app[STATE].settings.token
    if token is None:
        return plain_error(403, "token_required", "this endpoint needs a token over TCP; "
                           "set CACHEMGR_TOKEN (or token in the config) on the daemon")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return plain_error(401, "bad_token", "missing or wrong token; send 'Authorization: Bearer <token>'")
    return None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        doc = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        message = f"request body is not valid JSON ({exc})"
        raise web.HTTPBadRequest(text=json.dumps({"error": {"type": "bad_json", "message": message}}),
                                 content_type="application/json") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": {"type": "bad_json", "message":
                                 "request body must be a JSON object"}}), content_type="application/json")
    return doc


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The primary's: library errors become typed JSON answers (httperrors' one table), counted."""
    state = request.app[PRIMARY]
    state.metrics.requests += 1
    try:
        return await handler(request)
    except CachemgrError as err:
        state.metrics.error(err.code)
        return error_response(err)


async def health(request: web.Request) -> web.Response:
    """Touches no file: it answers while the store hangs, and says which store calls are stuck."""
    base = {"version": __version__, "pid": os.getpid()}
    return web.json_response(health_doc(request.app[STATE].io, base))


def _worker_totals(request: web.Request) -> tuple[dict[str, int], list[int]]:
    workers = request.app.get(WORKERS)
    if workers is None:
        return {"hits": 0, "requests": 0, "forwarded": 0}, []
    return workers.totals(), workers.pids()


async def status(request: web.Request) -> web.Response:
    state = request.app[PRIMARY]
    store_bytes, entries = await state.store_totals()
    m = state.metrics
    totals, pids = _worker_totals(request)
    return web.json_response({
        "version": __version__, "node": state.settings.node_id, "pid": os.getpid(), "workers": pids,
        "home": str(state.store.home),
        "uptime": round(time.time() - state.started, 3), "offline": state.settings.offline,
        "inflight": sorted(state.inflight), "hits": m.hits + totals["hits"], "misses": m.misses,
        "fetches": m.fetches, "upstream_bytes": m.upstream_bytes, "errors": m.errors, "store_bytes": store_bytes,
        "store_entries": entries, "upstreams": list(state.settings.upstream_urls),
        "worker_requests": totals["requests"], "forwarded": totals["forwarded"],
        "stuck_io": state.io.stuck(), "queued_io": state.io.queued,
    })


async def resolve(request: web.Request) -> web.Response:
    denied = _check_token(request)
    if denied:
        return denied
    doc = await _json_body(request)
    handle, offline = doc.get("handle"), doc.get("offline", False)  # offline: the client's own switch
    if not isinstance(handle, str) or not isinstance(offline, bool):
        return plain_error(400, "bad_request", "body must be {\"handle\": \"<model handle>\"}, "
                           "optionally with \"offline\": true")
    if is_oci(handle):
        return plain_error(400, "bad_request", f"{handle} is an OCI artifact reference, not a model handle: "
                           "POST it to /v1/pull (cachemgr pull), then resolve the model's own handle")
    resolved = await request.app[STATE].resolve(handle, offline)
    return web.Response(body=resolved.body, content_type="application/json",
                        headers={"Cache-Control": SHORT_LIVED})


async def pull(request: web.Request) -> web.Response:
    denied = _check_token(request)
    if denied:
        return denied
    doc = await _json_body(request)
    handles = doc.get("handles")
    if not isinstance(handles, list) or not all(isinstance(h, str) for h in handles) or not handles:
        return plain_error(400, "bad_request", "body must be {\"handles\": [\"<handle>\", ...]}")
    state = request.app[PRIMARY]
    results = []
    for h in handles:
        try:  # an oci://HOST/REPO:TAG is one artifact, as for `cachemgr pull`
            got = await (state.pull_artifact(h) if is_oci(h) else state.resolve(h))
            results.append({"handle": h, "status": "ok", **got.to_json()})
        except CachemgrError as err:
            results.append({"handle": h, "status": "failed", "error": {"type": err.code, "message": str(err)}})
    return web.json_response({"results": results})


async def _ref_for(state: Serving, handle: str) -> Ref:
    ref = await state.io.run(state.index.lookup, handle, what=f"look up {handle}")
    if ref is None:
        raise NotCachedError(f"{handle} is not in this daemon's store")
    return ref


async def _served(state: Serving, ref: Ref) -> None:
    """A model went out (a mirror tar, or a ref another daemon fetches by): it counts as a hit,
    and as a use, so that prune and du see it like a resolve (recorded in a thread)."""
    state.served()
    await mark_used(state.io, state.store.home, ref.handle, state.settings.node_id)


async def get_ref(request: web.Request) -> web.Response:
    handle = request.query.get("handle", "")
    if not handle:
        return plain_error(400, "bad_request", "give ?handle=<model handle>")
    state = request.app[STATE]
    ref = await _ref_for(state, handle)
    await _served(state, ref)
    return web.json_response(ref.to_json(), headers={"Cache-Control": SHORT_LIVED})


async def _serve_stored(request: web.Request, kind: str, path_of: Callable[[Store, str], Path],
                        content_type: str) -> web.StreamResponse:
    """A manifest or blob by its digest, with the headers that let any HTTP cache keep it
    (``immutable.serve_immutable``: a regular file reached without any link, read in threads).
    No token: it is read-only and named by its hash (a shared cache stores no answer to a
    request with ``Authorization``, RFC 9111 3.5)."""
    digest = request.match_info["digest"]
    store = request.app[STATE].store
    if _DIGEST.match(digest):
        resp = await serve_immutable(request, store.home, path_of(store, digest), digest, content_type,
                                     request.app[STATE].io)
        if resp is not None:
            return resp
    return plain_error(404, "not_found", f"no {kind} {digest}")


async def get_manifest(request: web.Request) -> web.StreamResponse:
    return await _serve_stored(request, "manifest", Store.manifest_path, "application/json")


async def get_blob(request: web.Request) -> web.StreamResponse:
    return await _serve_stored(request, "blob", Store.blob_path, "application/octet-stream")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[PRIMARY]
    store_bytes, entries = await state.store_totals()
    totals, pids = _worker_totals(request)
    text = render(state.metrics, len(state.inflight), store_bytes, entries, totals, len(pids) + 1)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _hosting_candidates(request: web.Request, path: str) -> list[str]:
    out = [f"https://tfhub.dev/{path}"]
    if path.startswith("models/"):
        out.append(f"https://www.kaggle.com/{path}")
    out += [f"{request.scheme}://{request.host}/{path}"]
    return out


def _stored_ref(index: RefIndex, candidates: list[str]) -> Ref | None:
    """The first candidate handle that is in the store (reads refs: in a store thread)."""
    for candidate in candidates:
        try:
            parse_handle(candidate)
        except HandleError:
            continue
        ref = index.lookup(candidate)
        if ref is not None:
            return ref
    return None


async def hosting(request: web.Request) -> web.StreamResponse:
    """GET /<publisher>/<model>/<version>?tf-hub-format=compressed: the model as a tar stream."""
    state = request.app[STATE]
    path = request.match_info["path"].strip("/")
    if not path or any(seg in ("..", ".") for seg in path.split("/")):
        return plain_error(404, "not_found", "no such model")
    if request.query.get("tf-hub-format") != "compressed":
        return plain_error(404, "not_found", "this mirror serves models with ?tf-hub-format=compressed")
    ref = await state.io.run(_stored_ref, state.index, _hosting_candidates(request, path), what=f"look up /{path}")
    if ref is not None:
        await _served(state, ref)  # a miss below is counted, and its use recorded, by resolve
    else:
        if state.settings.offline:
            return plain_error(404, "not_found", f"/{path} is not in this mirror's store")
        try:
            ref = (await state.resolve(f"https://tfhub.dev/{path}")).ref
        except HandleError:
            return plain_error(404, "not_found", f"/{path} is not a model this mirror knows")
        except FetchError as err:
            if err.status == 404:
                return plain_error(404, "not_found", f"/{path}: {err}")
            raise
    manifest = await state.io.run(state.store.read_manifest, ref.manifest, what=f"read manifest {ref.manifest}")
    chunks = tar_chunks(state.store, ref.manifest, manifest)
    gz = request.query.get("compression") == "gzip"
    request[MIRRORED] = ref.handle  # logged once the tar is out (logs.ServeLog)
    resp = web.StreamResponse(headers={
        "Content-Type": "application/gzip" if gz else "application/x-tar",
        "ETag": f'"{ref.manifest}"',
    })
    if not gz:
        resp.content_length = tar_size(manifest)
    await resp.prepare(request)
    source = gzip_chunks(chunks) if gz else chunks
    what = f"read {ref.handle} for its tar"
    try:
        while (chunk := await state.io.run(next, source, None, what=what)) is not None:  # disk reads off the loop
            await resp.write(chunk)
    finally:  # a client gone mid-tar: its open file is closed in a store thread too, not at GC on the loop
        state.io.submit(getattr(source, "close"), what=f"close {ref.handle}'s tar")  # noqa: B009 - a generator
    await resp.write_eof()
    return resp


def _client_timeout(request: web.Request) -> float:
    return request.app[STATE].settings.client_timeout


def create_app(state: Serving, forward: Handler | None = None, middleware: Middleware | None = None
               ) -> web.Application:
    """The primary's app, or (with ``forward``) a worker's: the read-only paths are served here,
    the primary-only endpoints go to ``forward``, and so does whatever ``middleware`` sends there."""
    app = web.Application(middlewares=[body_deadline(_client_timeout), middleware or errors_middleware],
                          client_max_size=state.settings.max_body)
    app[STATE] = state
    if isinstance(state, DaemonState):
        app[PRIMARY] = state

    async def lifecycle(app: web.Application) -> Any:
        await state.start()
        yield
        await state.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", forward or status)
    app.router.add_post("/v1/resolve", resolve)
    app.router.add_post("/v1/pull", forward or pull)
    app.router.add_get("/v1/refs", get_ref)
    app.router.add_get("/v1/manifests/{digest}", get_manifest)
    app.router.add_get("/v1/blobs/{digest}", get_blob)
    app.router.add_get("/metrics", forward or metrics)
    app.router.add_get("/{path:.+}", hosting)
    if forward is not None:
        app.router.add_route("*", "/{path:.*}", forward)  # anything else: the primary's answer, 404/405 included
    return app
