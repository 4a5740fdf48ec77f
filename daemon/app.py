"""The aiohttp application: versioned JSON API, metrics, and mirror serving."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cachemgr import __version__
from cachemgr.errors import CachemgrError, FetchError, HandleError, NotCachedError
from cachemgr.handles import parse_handle
from cachemgr.refs import Ref

from .httperrors import error_response, plain_error
from .metrics import render
from .state import DaemonState
from .tarstream import gzip_chunks, tar_chunks, tar_size

log = logging.getLogger("cachemgrd")
STATE = web.AppKey("state", DaemonState)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_tcp(request: web.Request) -> bool:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return isinstance(sockname, tuple)


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
        doc = await request.json()
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
    state = request.app[STATE]
    state.metrics.requests += 1
    try:
        return await handler(request)
    except CachemgrError as err:
        state.metrics.error(err.code)
        return error_response(err)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store_bytes, entries = state.store_totals()
    m = state.metrics
    return web.json_response({
        "version": __version__, "pid": __import__("os").getpid(), "home": str(state.store.home),
        "uptime": round(time.time() - state.started, 3), "offline": state.settings.offline,
        "inflight": sorted(state.inflight), "hits": m.hits, "misses": m.misses, "fetches": m.fetches,
        "upstream_bytes": m.upstream_bytes, "errors": m.errors, "store_bytes": store_bytes,
        "store_entries": entries, "upstreams": list(state.settings.upstreams),
    })


async def resolve(request: web.Request) -> web.Response:
    denied = _check_token(request)
    if denied:
        return denied
    doc = await _json_body(request)
    handle = doc.get("handle")
    if not isinstance(handle, str):
        return plain_error(400, "bad_request", "body must be {\"handle\": \"<model handle>\"}")
    resolved = await request.app[STATE].resolve(handle)
    return web.json_response(resolved.to_json())


async def pull(request: web.Request) -> web.Response:
    denied = _check_token(request)
    if denied:
        return denied
    doc = await _json_body(request)
    handles = doc.get("handles")
    if not isinstance(handles, list) or not all(isinstance(h, str) for h in handles) or not handles:
        return plain_error(400, "bad_request", "body must be {\"handles\": [\"<handle>\", ...]}")
    state = request.app[STATE]
    results = []
    for h in handles:
        try:
            results.append({"handle": h, "status": "ok", **(await state.resolve(h)).to_json()})
        except CachemgrError as err:
            results.append({"handle": h, "status": "failed", "error": {"type": err.code, "message": str(err)}})
    return web.json_response({"results": results})


def _ref_for(state: DaemonState, handle: str) -> Ref:
    ref = state.index.lookup(handle)
    if ref is None:
        raise NotCachedError(f"{handle} is not in this daemon's store")
    return ref


async def get_ref(request: web.Request) -> web.Response:
    handle = request.query.get("handle", "")
    if not handle:
        return plain_error(400, "bad_request", "give ?handle=<model handle>")
    return web.json_response(_ref_for(request.app[STATE], handle).to_json())


async def get_manifest(request: web.Request) -> web.StreamResponse:
    digest = request.match_info["digest"]
    path = request.app[STATE].store.manifest_path(digest)
    if not _DIGEST.match(digest) or not path.is_file():
        return plain_error(404, "not_found", f"no manifest {digest}")
    return web.FileResponse(path, headers={"Content-Type": "application/json"})


async def get_blob(request: web.Request) -> web.StreamResponse:
    digest = request.match_info["digest"]
    path = request.app[STATE].store.blob_path(digest) if _DIGEST.match(digest) else None
    if path is None or not path.is_file():
        return plain_error(404, "not_found", f"no blob {digest}")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store_bytes, entries = state.store_totals()
    text = render(state.metrics, len(state.inflight), store_bytes, entries)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _hosting_candidates(request: web.Request, path: str) -> list[str]:
    out = [f"https://tfhub.dev/{path}"]
    if path.startswith("models/"):
        out.append(f"https://www.kaggle.com/{path}")
    out += [f"{request.scheme}://{request.host}/{path}"]
    return out


async def hosting(request: web.Request) -> web.StreamResponse:
    """GET /<publisher>/<model>/<version>?tf-hub-format=compressed: the model as a tar stream."""
    state = request.app[STATE]
    path = request.match_info["path"].strip("/")
    if not path or any(seg in ("..", ".") for seg in path.split("/")):
        return plain_error(404, "not_found", "no such model")
    if request.query.get("tf-hub-format") != "compressed":
        return plain_error(404, "not_found", "this mirror serves models with ?tf-hub-format=compressed")
    ref = None
    for candidate in _hosting_candidates(request, path):
        try:
            parse_handle(candidate)
        except HandleError:
            continue
        ref = state.index.lookup(candidate)
        if ref is not None:
            break
    if ref is None:
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
    manifest = state.store.read_manifest(ref.manifest)
    snapshot = state.store.snapshot_path(ref.manifest)
    chunks = tar_chunks(snapshot, manifest)
    gz = request.query.get("compression") == "gzip"
    resp = web.StreamResponse(headers={
        "Content-Type": "application/gzip" if gz else "application/x-tar",
        "ETag": f'"{ref.manifest}"',
    })
    if not gz:
        resp.content_length = tar_size(manifest)
    await resp.prepare(request)
    source = gzip_chunks(chunks) if gz else chunks
    loop = asyncio.get_running_loop()
    while (chunk := await loop.run_in_executor(None, next, source, None)) is not None:  # disk reads off the loop
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def create_app(state: DaemonState) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=state.settings.max_body)
    app[STATE] = state

    async def lifecycle(app: web.Application) -> Any:
        await state.start()
        yield
        await state.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/resolve", resolve)
    app.router.add_post("/v1/pull", pull)
    app.router.add_get("/v1/refs", get_ref)
    app.router.add_get("/v1/manifests/{digest}", get_manifest)
    app.router.add_get("/v1/blobs/{digest}", get_blob)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/{path:.+}", hosting)
    return app
