"""A worker process: serves the daemon's sockets beside the primary, answering hits itself.

Started by the primary (``python -m cachemgrd.worker``) with the listening sockets passed as
file descriptors and a pickled ``WorkerSpec`` on stdin. It answers the read-only paths (clean
resolve hits, health, refs, manifests, blobs, mirror downloads of cached models) from the
store and forwards everything else, misses included, to the primary, which alone fetches,
so single flight holds across processes. It exits when told (SIGTERM) or when the primary is
gone (its stdin reaches EOF), finishing the requests it has (``DRAIN_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.typedefs import Middleware

from cachemgr.errors import CachemgrError
from cachemgr.settings import Settings
from cachemgr.store.aio import StoreIO
from cachemgr.store.objects import open_store
from cachemgr.store.refs import RefIndex
from cachemgrd import logs
from cachemgrd.app import Handler, create_app
from cachemgrd.counters import CounterSlot, SharedCounters
from cachemgrd.forward import Forwarder
from cachemgrd.frontdoor import FrontDoor, is_tcp
from cachemgrd.gc_freeze import freeze_startup_objects
from cachemgrd.hitpath import HitPath, Resolved
from cachemgrd.listeners import LISTEN_BACKLOG

log = logging.getLogger("cachemgrd.worker")
READY = b"ready\n"
# How long a stopping worker lets the requests it has run. A forwarded resolve lasts as long as
# the primary's fetch, so a reload (which replaces the workers) must not cut it; at shutdown the
# primary cancels its fetches first, and kills a worker that is not gone after STOP_TIMEOUT.
DRAIN_TIMEOUT = 6 * 3600.0
# How long a stopping worker waits for the first request on a connection it accepted (a TCP one
# is closed after client_timeout if it sent nothing: frontdoor.py).
FIRST_REQUEST_TIMEOUT = 75.0


@dataclass(frozen=True)
class WorkerSpec:
    settings: Settings
    fds: tuple[int, ...]  # listening sockets, inherited
    primary_socket: str  # the primary's private socket
    counters: str  # the shared counters file
    slots: int
    slot: int

    def encode(self) -> bytes:
        data = pickle.dumps(self)
        return struct.pack("!I", len(data)) + data


def read_spec(stream: BinaryIO) -> WorkerSpec:
    """The spec the primary wrote to our stdin (a length, then the pickle; the pipe is the primary's)."""
    head = stream.read(4)
    if len(head) != 4:
        raise SystemExit("cachemgrd.worker: no spec on stdin; workers are started by `cachemgr daemon`")
    (size,) = struct.unpack("!I", head)
    spec = pickle.loads(stream.read(size))
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("cachemgrd.worker: stdin did not carry a WorkerSpec")
    return spec


class ForwardToPrimary(Exception):  # noqa: N818 - a signal, not an error
    """The request needs the primary: a miss, a relink, or anything that failed here."""


class WorkerState:
    """A worker's half of the daemon state: the store, read-only, and its counter slot."""

    def __init__(self, settings: Settings, slot: CounterSlot) -> None:
        self.settings = settings
        self.store = open_store(settings, create=False, clean=False)  # the primary made it and cleaned up
        self.index = RefIndex(self.store)
        self.slot = slot
        self.io = StoreIO(settings.stuck_io_after)  # store calls off the loop (cachemgr.store.aio)
        self.hits = HitPath(self.store, self.index, settings.node_id, self.io)

    async def resolve(self, text: str, offline: bool = False) -> Resolved:
        resolved = await self.hits.lookup(text)  # a hit is an answer offline too; a miss goes to the primary
        if resolved is None:
            raise ForwardToPrimary(text)
        self.slot.hit()
        return resolved

    def served(self) -> None:
        self.slot.hit()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.io.close()


def forwarding_middleware(slot: CounterSlot, forward: Handler,
                          spoken: weakref.WeakSet[asyncio.BaseTransport]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        slot.request()
        if request.transport is not None:
            spoken.add(request.transport)  # a connection that brought a request (see stop_accepting)
        try:
            return await handler(request)
        except (ForwardToPrimary, CachemgrError):  # the primary gives the answer (and counts the error)
            return await forward(request)

    return middleware


async def stop_accepting(runner: web.AppRunner, spoken: weakref.WeakSet[asyncio.BaseTransport],
                         door: FrontDoor) -> None:
    """Close our listening sockets, then wait until each connection we accepted has brought its
    first request (or closed). Connections still queued go to the other processes; but aiohttp's
    shutdown closes every connection with no request in progress, and one we accepted whose request
    had not arrived yet would be dropped unanswered (or, its bytes discarded, hang until the drain
    timeout), though the client did nothing wrong: a reload would cut it."""
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_REQUEST_TIMEOUT
    while loop.time() < deadline:
        # Sleep first: connections accepted just before the sockets closed are registered
        # with the server one or two loop iterations later.
        await asyncio.sleep(0.05)
        if all(c.transport is None or c.transport in spoken for c in server.connections + door.connections()):
            return


async def serve(spec: WorkerSpec, control: int) -> None:
    counters = SharedCounters(Path(spec.counters), spec.slots)
    slot = counters.slot(spec.slot)
    forwarder = Forwarder(spec.primary_socket)
    await forwarder.start()

    async def forward(request: web.Request) -> web.StreamResponse:
        slot.forwarded()
        return await forwarder(request)

    state = WorkerState(spec.settings, slot)
    spoken: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
    app = create_app(state, forward, forwarding_middleware(slot, forward, spoken))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=DRAIN_TIMEOUT, **logs.runner_options())
    await runner.setup()
    door = FrontDoor(spec.settings)
    for fd in spec.fds:
        sock = socket.socket(fileno=fd)
        if is_tcp(sock):  # client_timeout and max_peer_connections, counted in this worker (frontdoor.py)
            await door.serve(runner, sock, LISTEN_BACKLOG)
        else:
            await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def control_readable() -> None:
        try:
            data = os.read(control, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the primary is gone
            loop.remove_reader(control)
            stop.set()

    os.set_blocking(control, False)
    loop.add_reader(control, control_readable)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's ^C or hangup reaches the whole group:
        loop.add_signal_handler(sig, lambda: None)  # the primary decides, and stops or replaces us
    freeze_startup_objects()
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    await stop.wait()
    await stop_accepting(runner, spoken, door)
    await door.shutdown(DRAIN_TIMEOUT)
    await runner.cleanup()
    await forwarder.close()
    counters.close()


def main() -> None:
    spec = read_spec(sys.stdin.buffer)
    logs.configure(spec.settings, worker=True)
    asyncio.run(serve(spec, sys.stdin.fileno()))


if __name__ == "__main__":
    from cachemgrd.worker import main as imported_main  # the spec's classes are that module's, not __main__'s

    imported_main()
