"""One blob's body from an upstream daemon, received in a thread of its own.

Through aiohttp a node's fill from a site daemon ran at half curl's speed on two cores: the
event loop's thread makes a ``bytes`` object of every 256 KiB read, a stream buffer joins them
into chunks (one more copy), and only then do threads hash and write them. Here one thread per
blob does a blocking ``http.client`` GET and receives the body straight into a few reused 1 MiB
buffers (``readinto``: the only copy in user space); each buffer is hashed on a thread of its
own (hashlib lets go of the GIL; sha256 is the longest step, about 1 GB/s) and ``pwrite``n by a
store thread (``StoreIO``, so a write hung on a network mount is reported) while the next one
arrives: receive, hash and write run side by side. 1 MiB stays in cache between the receive and
the hash; 4 MiB buffers measured slower. Measured by benchmarks/bench_fill.py.

What aiohttp did, this does too: ``proxy`` (``http://[user:pass@]host:port``; an ``http://``
upstream is asked for by absolute URL, an ``https://`` one through a ``CONNECT`` tunnel), the
CA bundle (``ssl_context``), a short connect timeout, a read timeout between any two receives
(the stall protection), headers bounded (``http.client``'s line and count limits), at most
``limit`` bytes read whatever the server says. The blob's descriptor is the thread's: it closes
it (through ``StoreIO``) once its writes are done, so a cancelled caller never closes it under a
write; a cancel shuts the socket, which ends the receive at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import os
import queue
import socket
import ssl
import threading
import urllib.parse
from concurrent.futures import Future
from typing import Any

from cachemgr import __version__
from cachemgr.errors import FetchError
from cachemgr.store.aio import StoreIO

CHUNK = 1 << 20  # bytes received, hashed and written at a time
BUFFERS = 4  # one being received, the ones before it being hashed and written


def _basic(userinfo: str) -> str:
    user, _, password = userinfo.partition(":")
    raw = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class _WriteFailed(Exception):
    """A write's OSError, told apart from the network's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    try:
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    except OSError as exc:
        raise _WriteFailed(exc) from None


class _Hasher:
    """The sha256 of the buffers handed to it, in order, on a thread of its own."""

    def __init__(self, name: str) -> None:
        self.sha = hashlib.sha256()
        self.jobs: queue.SimpleQueue[tuple[memoryview, Future[None]] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def add(self, data: memoryview) -> Future[None]:
        done: Future[None] = Future()
        self.jobs.put((data, done))
        return done

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            data, done = job
            self.sha.update(data)  # hashlib lets go of the GIL
            done.set_result(None)

    def close(self) -> None:
        self.jobs.put(None)

    def hexdigest(self) -> str:
        self.thread.join()
        return self.sha.hexdigest()


class BlobReceiver:
    """``GET url`` (through ``proxy``), its body into ``fd``: ``run()`` in a thread, ``abort()`` from any."""

    def __init__(self, url: str, proxy: str | None, headers: dict[str, str], limit: int, fd: int, io: StoreIO,
                 what: str, ssl_context: ssl.SSLContext | None, connect_timeout: float, read_timeout: float) -> None:
        self.url, self.proxy, self.limit, self.fd, self.io, self.what = url, proxy, limit, fd, io, what
        self.headers = {"User-Agent": f"cachemgr/{__version__}", "Accept-Encoding": "identity", **headers}
        self.ssl_context = ssl_context
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        split = urllib.parse.urlsplit(url)
        self.where = split._replace(netloc=split.netloc.rpartition("@")[2], query="").geturl()  # for messages
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False
        self.got = 0

    def abort(self) -> None:
        """End the transfer: the receive in progress (or the next) fails at once."""
        with self._lock:
            self._aborted = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        """The connection (to the proxy, if any) and the request target."""
        up = urllib.parse.urlsplit(self.url)
        https = up.scheme == "https"
        port = up.port or (443 if https else 80)
        target = urllib.parse.urlunsplit(("", "", up.path or "/", up.query, ""))
        if up.username is not None:
            self.headers["Authorization"] = _basic(up.netloc.rpartition("@")[0])
        conn: http.client.HTTPConnection
        if self.proxy is None:
            conn = (http.client.HTTPSConnection(up.hostname or "", port, timeout=self.connect_timeout,
                                                context=self._context()) if https else
                    http.client.HTTPConnection(up.hostname or "", port, timeout=self.connect_timeout))
            return conn, target
        proxy = urllib.parse.urlsplit(self.proxy)
        if proxy.scheme != "http":
            raise FetchError(f"{self.where}: blobs go through an http:// proxy only, not {proxy.scheme}:// "
                             f"({proxy.hostname}); give the proxy's http:// URL (CACHEMGR_PROXY or the group's proxy)")
        auth = {"Proxy-Authorization": _basic(proxy.netloc.rpartition("@")[0])} if proxy.username is not None else {}
        if https:  # a tunnel to the upstream, TLS inside it
            conn = http.client.HTTPSConnection(proxy.hostname or "", proxy.port or 80, timeout=self.connect_timeout,
                                               context=self._context())
            conn.set_tunnel(up.hostname or "", port, headers=auth)
            return conn, target
        self.headers.update(auth)
        conn = http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, timeout=self.connect_timeout)
        return conn, urllib.parse.urlunsplit(("http", up.netloc.rpartition("@")[2], up.path or "/", up.query, ""))

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def run(self) -> tuple[int, str]:
        """Bytes received (at most ``limit + 1``) and their sha256; in the receiving thread."""
        writes: list[list[Future[Any]]] = [[] for _ in range(BUFFERS)]
        try:
            conn, target = self._connection()
            try:
                conn.connect()
                with self._lock:
                    self._sock = conn.sock
                    if self._aborted:
                        raise FetchError(f"{self.where}: cancelled")
                conn.sock.settimeout(self.read_timeout)
                conn.request("GET", target, headers=self.headers)
                resp = conn.getresponse()
                if resp.status != 200:
                    raise FetchError(f"{self.where}: upstream answered HTTP {resp.status} {resp.reason}",
                                     url=self.where, status=resp.status)
                return self._body(resp, writes)
            finally:
                conn.close()
        except _WriteFailed as exc:
            raise exc.error from None
        except http.client.HTTPException as exc:
            raise FetchError(f"{self.where}: the answer broke off after {self.got} bytes or is not HTTP "
                             f"({type(exc).__name__}); the upstream or the proxy failed", url=self.where) from None
        except OSError as exc:
            what = f"receive failed after {self.got} bytes" if self.got else "connection failed"
            raise FetchError(f"{self.where}: {what} ({type(exc).__name__}: {exc}); the upstream or the proxy "
                             "failed", url=self.where) from None
        finally:
            self._finish(writes)

    def _body(self, resp: http.client.HTTPResponse, pending: list[list[Future[Any]]]) -> tuple[int, str]:
        hasher = _Hasher(f"hash {self.what}")
        try:
            buffers = [memoryview(bytearray(CHUNK)) for _ in range(BUFFERS)]
            want = self.limit + 1  # one byte more than allowed tells a longer body
            i = 0
            while self.got < want:
                k = i % BUFFERS
                for job in pending[k]:  # the buffer's last hash and write, done before it is filled again
                    job.result()
                pending[k] = []
                view = buffers[k][:min(CHUNK, want - self.got)]
                n = resp.readinto(view)
                if not n:
                    if resp.length:  # http.client ends a body cut short quietly
                        raise FetchError(f"{self.where}: the answer broke off after {self.got} bytes, "
                                         f"{resp.length} short of its Content-Length; the upstream or the proxy "
                                         "failed", url=self.where)
                    break
                data = view[:n]
                pending[k] = [hasher.add(data),
                              self.io.submit(_pwrite_all, self.fd, data, self.got, what=f"write {self.what}")]
                self.got += n
                i += 1
        finally:
            hasher.close()
        return self.got, hasher.hexdigest()

    def _finish(self, pending: list[list[Future[Any]]]) -> None:
        """Every write done (the first error raised, unless one is on its way), then the descriptor closed."""
        error: BaseException | None = None
        for jobs in pending:
            for job in jobs:
                error = error or job.exception()
        try:
            self.io.submit(os.close, self.fd, what=f"close {self.what}").result()
        except RuntimeError:  # store I/O shut down: the process is stopping
            os.close(self.fd)
        if isinstance(error, _WriteFailed):
            raise error.error from None
        if error is not None:
            raise error


async def receive(receiver: BlobReceiver) -> tuple[int, str]:
    """``receiver.run()`` on a thread of its own (a network transfer is no store call); a cancel aborts it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, str]] = loop.create_future()

    def settle(result: tuple[int, str] | None, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            assert result is not None
            done.set_result(result)

    def work() -> None:
        result: tuple[int, str] | None = None
        error: BaseException | None = None
        try:
            result = receiver.run()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name=f"receive {receiver.what}", daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        receiver.abort()
        raise
