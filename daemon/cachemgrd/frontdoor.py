"""The daemon's TCP front door: how long a client may take to send its request, and how many
connections one peer address may hold open (slowloris, idle floods, half-sent bodies).

- ``client_timeout``: a TCP connection must bring a complete request head within that time of
  connecting, or of its previous answer (aiohttp's own keep-alive timer, ``keepalive_timeout``,
  which closes a connection whose next request has not arrived; so an idle keep-alive connection
  goes then too), and its body within that time of the head (``body_deadline``: else a 408 answer
  and the connection closes).
- ``max_peer_connections``: a peer address with that many TCP connections open to this process
  gets its next ones answered 429 and closed at once (``GuardedServer.connection_made``). Each
  process (the primary, each worker) counts the connections it accepted.

Each TCP listener is served by its own ``GuardedServer``: an aiohttp ``web.Server`` with those
options around the application's handler. The Unix socket keeps the runner's server: it is local,
guarded by its mode, and herds of local processes connect to it at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from cachemgr.settings import Settings
from cachemgrd.forward import client_is_tcp
from cachemgrd.httperrors import error_body, plain_error
from cachemgrd.logs import runner_options

log = logging.getLogger(__name__)
LINGER = 10.0  # aiohttp's default: how long an answered request's unread body is drained before closing
REFUSAL_LOG_EVERY = 60.0  # seconds between the log lines about one peer's refused connections


def is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def _peer(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    return str(name[0]) if isinstance(name, tuple) and name else "unknown"


class PeerLimit:
    """Open TCP connections per peer address in this process, at most ``cap`` each."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: dict[str, int] = {}
        self._refused: dict[str, tuple[float, int]] = {}  # peer -> (last logged, refused since)

    def admit(self, peer: str) -> bool:
        if self.open.get(peer, 0) >= self.cap:
            self._note_refusal(peer)
            return False
        self.open[peer] = self.open.get(peer, 0) + 1
        return True

    def release(self, peer: str) -> None:
        left = self.open.get(peer, 1) - 1
        if left > 0:
            self.open[peer] = left
        else:
            self.open.pop(peer, None)

    def _note_refusal(self, peer: str) -> None:
        now = time.monotonic()
        last, count = self._refused.get(peer, (-REFUSAL_LOG_EVERY, 0))
        count += 1
        if now - last < REFUSAL_LOG_EVERY:
            self._refused[peer] = (last, count)
            return
        self._refused[peer] = (now, 0)
        log.warning("refused %d connection(s) from %s: it has %d open, the limit (max_peer_connections)",
                    count, peer, self.cap, extra={"event": "peer_refused", "peer": peer, "refused": count,
                                                  "limit": self.cap})

    def refusal(self, peer: str) -> bytes:
        """The 429 answer a refused connection gets before it is closed."""
        body = json.dumps(error_body("too_many_connections", f"{peer} has {self.cap} connections open to this "
                                     "daemon process, its limit (max_peer_connections); close idle ones, or raise "
                                     "CACHEMGR_MAX_PEER_CONNECTIONS on the daemon")).encode()
        head = (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        return head.encode() + body


class GuardedServer(web.Server):
    """The application's handler behind one TCP listener, with the front door's rules."""

    def __init__(self, base: web.Server, limit: PeerLimit, timeout: float) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory, keepalive_timeout=timeout,
                         lingering_time=min(LINGER, timeout), **runner_options())
        self.limit = limit
        self._peers: dict[web.RequestHandler, str] = {}

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        peer = _peer(transport)
        if not self.limit.admit(peer):
            transport.write(self.limit.refusal(peer))
            handler.force_close()  # closes the transport once the answer is out; no request is read
            return
        self._peers[handler] = peer
        super().connection_made(handler, transport)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        peer = self._peers.pop(handler, None)
        if peer is not None:
            self.limit.release(peer)
        super().connection_lost(handler, exc)


class GuardedSite(web.SockSite):
    """A listening TCP socket served through a ``GuardedServer`` (registered with the runner as a site)."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, server: GuardedServer, backlog: int) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self.guarded = server

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site, as SockSite.start does, but serves our server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guarded, sock=self._sock, backlog=self._backlog)


class FrontDoor:
    """This process's TCP listeners, their servers and their shared per-peer counts."""

    def __init__(self, settings: Settings) -> None:
        self.limit = PeerLimit(settings.max_peer_connections)
        self.timeout = settings.client_timeout
        self.sites: list[GuardedSite] = []
        self.runner: web.AppRunner | None = None

    async def serve(self, runner: web.AppRunner, sock: socket.socket, backlog: int) -> None:
        assert runner.server is not None, "runner.setup() first"
        site = GuardedSite(runner, sock, GuardedServer(runner.server, self.limit, self.timeout), backlog)
        await site.start()
        self.sites.append(site)
        self.runner = runner

    def connections(self) -> list[web.RequestHandler]:
        return [c for site in self.sites for c in site.guarded.connections]

    async def stop_listening(self) -> None:
        for site in self.sites:
            if self.runner is not None and site in self.runner.sites:
                await site.stop()

    async def shutdown(self, timeout: float) -> None:
        """Stop listening, close idle connections, and let requests in progress finish (up to ``timeout``)."""
        await self.stop_listening()
        for site in self.sites:
            site.guarded.pre_shutdown()
        await asyncio.gather(*(site.guarded.shutdown(timeout) for site in self.sites))


def body_deadline(timeout_of: Callable[[web.Request], float]) -> Middleware:
    """A TCP request's body must arrive whole within ``timeout_of(request)`` seconds; else 408 and close."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.body_exists and client_is_tcp(request):
            timeout = timeout_of(request)
            try:
                async with asyncio.timeout(timeout):
                    await request.read()  # kept by aiohttp: the handler's read() gets the same bytes
            except TimeoutError:
                resp = plain_error(408, "client_timeout", f"the request body did not arrive within {timeout:g} s "
                                   "(client_timeout); send the whole request at once")
                resp.force_close()
                return resp
        return await handler(request)

    return middleware
