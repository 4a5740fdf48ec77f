"""A hostile HTTP origin on 127.0.0.1: raw sockets, one thread per connection.

It speaks just enough HTTP/1.1 to misbehave on purpose, which a well-behaved framework
(aiohttp.web, http.server) will not do: it drips bytes, loops redirects, sends oversized
headers, sends more body than its Content-Length and puts a gzip bomb on a 302. Each path's
first segment picks the behaviour; the rest of the path and the query are ignored, so a
handle is ``http://127.0.0.1:PORT/<mode>/publisher/model/1``.

/ok/...      the archive, fast; honours ``Range: bytes=N-``
/drip/...    ``drip_fast`` bytes at once, then one byte every ``drip_interval`` s (honours Range)
/slow/...    ``slow_chunk`` bytes every ``slow_interval`` s (a slow line above the limit)
/loop/a|b    302 to the other one, forever
/headers/... 200 with ``header_count`` header lines of ``header_bytes`` bytes each
/long/...    Content-Length says the archive's size, the body is the archive plus ``extra`` bytes;
             with ``long_pause`` > 0 the last 100 bytes and the extra come that much later
/bomb/...    302 to /ok/... with ``Content-Encoding: gzip`` and ``bomb_bytes`` of gzip (each
             1 MiB of zeros) as its body; ``bomb_sent`` counts what the client took of it
"""

from __future__ import annotations

import gzip
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from types import TracebackType


@dataclass
class Seen:
    path: str
    range: str | None


def _member() -> bytes:
    """One gzip member inflating to 1 MiB of zeros (about 1 KiB); members concatenate."""
    return gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)


class HostileOrigin:
    def __init__(self, archive: bytes) -> None:
        self.archive = archive
        self.drip_fast = 1000
        self.drip_interval = 2.0
        self.slow_chunk = 4096
        self.slow_interval = 0.25
        self.header_count = 1
        self.header_bytes = 256 * 1024
        self.extra = 64 * 1024
        self.long_pause = 0.0
        self.bomb_bytes = 64 << 20
        self.bomb_sent = 0
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        origin = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                origin._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/hostile/mymul/1"

    def paths(self, mode: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.startswith(f"/{mode}/")]

    def __enter__(self) -> HostileOrigin:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- one connection ------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        buf = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1].split("?")[0]
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
                rng = headers.get("range")
                with self._lock:
                    self.seen.append(Seen(path, rng))
                if not self._answer(sock, path, rng):
                    return
        except OSError:
            return

    def _answer(self, sock: socket.socket, path: str, rng: str | None) -> bool:
        """Send one response; False when the connection must be closed afterwards."""
        mode = path.split("/")[1]
        if mode == "loop":
            other = "b" if path.endswith("/a") else "a"
            sock.sendall(_head(302, {"Location": f"/loop/{other}", "Content-Length": "0"}))
            return True
        if mode == "headers":
            padding = {f"X-Padding-{i}": "x" * self.header_bytes for i in range(self.header_count)}
            sock.sendall(_head(200, {**padding, "Content-Length": str(len(self.archive))}) + self.archive)
            return False
        if mode == "long":
            head = _head(200, {"Content-Length": str(len(self.archive))})
            if self.long_pause:
                sock.sendall(head + self.archive[:-100])
                time.sleep(self.long_pause)
                sock.sendall(self.archive[-100:] + b"\0" * self.extra)
            else:
                sock.sendall(head + self.archive + b"\0" * self.extra)
            return False
        if mode == "bomb":
            member = _member()
            target = path.replace("/bomb/", "/ok/", 1)
            sock.sendall(_head(302, {"Location": target, "Content-Encoding": "gzip",
                                     "Content-Type": "text/html",
                                     "Content-Length": str(self.bomb_bytes // len(member) * len(member))}))
            for _ in range(self.bomb_bytes // len(member)):
                sock.sendall(member)
                with self._lock:
                    self.bomb_sent += len(member)
            return True
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.archive[start:]
        status, extra = (206, {"Content-Range": f"bytes {start}-{len(self.archive) - 1}/{len(self.archive)}"}
                         ) if rng else (200, {})
        sock.sendall(_head(status, {"Content-Length": str(len(body)), "ETag": '"hostile-1"', **extra}))
        if mode == "ok":
            sock.sendall(body)
        elif mode == "drip":
            sock.sendall(body[:self.drip_fast])
            for i in range(self.drip_fast, len(body)):
                if self._stop.wait(self.drip_interval):
                    return False
                sock.sendall(body[i:i + 1])
        elif mode == "slow":
            for i in range(0, len(body), self.slow_chunk):
                sock.sendall(body[i:i + self.slow_chunk])
                time.sleep(self.slow_interval)
        return True


_REASONS = {200: "OK", 206: "Partial Content", 302: "Found"}


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
