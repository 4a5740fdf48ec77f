"""A worker passes every request it does not answer itself to the primary, unchanged.

The primary listens on a private Unix socket (in a 0700 directory) for this. The worker
says in ``VIA_HEADER`` whether its client came over TCP, so that the primary applies the
token rule to the client, not to the worker; a client's own copy of the header is dropped.
Responses, tar streams included, are relayed as they arrive.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from cachemgrd.httperrors import plain_error

log = logging.getLogger("cachemgrd.worker")
VIA_HEADER = "X-Cachemgr-Via"
RELAY_CHUNK = 256 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp sets itself for the new message.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                  "upgrade", "proxy-authenticate", "proxy-authorization", "content-length",
                  VIA_HEADER.lower()})


def client_is_tcp(request: web.Request) -> bool:
    """Whether this request's own connection is TCP (a Unix socket's name is a str)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return isinstance(sockname, tuple)


class Forwarder:
    """Relays requests to the primary's private socket (one keep-alive pool per worker)."""

    def __init__(self, primary_socket: str) -> None:
        self.primary_socket = primary_socket
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.UnixConnector(path=self.primary_socket, limit=0)
        # No total timeout: a forwarded resolve waits as long as the primary's fetch takes.
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        headers[VIA_HEADER] = "tcp" if client_is_tcp(request) else "unix"
        resp: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, f"http://primary{request.path_qs}", headers=headers,
                                            data=body or None, allow_redirects=False) as upstream:
                resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP))
                if upstream.content_length is not None:
                    resp.content_length = upstream.content_length
                await resp.prepare(request)
                async for chunk in upstream.content.iter_chunked(RELAY_CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            log.warning("primary unreachable for %s %s: %s", request.method, request.path, exc)
            if resp is not None and resp.prepared:
                raise  # part of the answer is out: drop the connection so the client sees it cut
            return plain_error(503, "primary_unavailable", "the daemon's primary process is not answering "
                               f"({exc.__class__.__name__}); check `systemctl status cachemgr` or restart it")
