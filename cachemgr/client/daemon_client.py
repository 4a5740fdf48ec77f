"""A stdlib-only client of the daemon's JSON API over its Unix socket (used by the shim and CLI)."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import time
from typing import Any


class DaemonUnavailable(OSError):
    """The daemon's socket is missing or nobody answers on it."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        delay = 0.01
        for _attempt in range(8):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BlockingIOError:  # the listen backlog is full: the daemon is busy, not gone
                sock.close()
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            except OSError as exc:
                sock.close()
                raise DaemonUnavailable(exc.errno, f"no cachemgr daemon at {self._path} ({exc.strerror})") from None
            self.sock = sock
            return
        raise DaemonUnavailable(errno.EAGAIN, f"cachemgr daemon at {self._path} is overloaded (backlog full)")


def call(socket_path: str, method: str, path: str, body: Any = None,
         timeout: float = 3600.0) -> tuple[int, dict[str, Any]]:
    """One request; returns (status, decoded JSON). Raises DaemonUnavailable."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        doc = {"error": {"type": "bad_response", "message": data[:200].decode(errors="replace")}}
    return resp.status, doc
