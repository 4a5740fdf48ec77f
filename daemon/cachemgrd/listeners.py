"""The daemon's listening sockets, bound once by the primary and shared with its workers.

Binding them here (rather than letting aiohttp's UnixSite/TCPSite do it) gives socket
objects that worker processes inherit; every process then serves them with ``SockSite``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cachemgr.errors import ConfigError
from cachemgr.settings import Settings
from cachemgrd import systemd

LISTEN_BACKLOG = 4096  # herds of hundreds of processes connect at once (the kernel caps it at somaxconn)


@dataclass
class Listeners:
    sockets: list[socket.socket] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    unix_path: Path | None = None  # the socket file this process created (removed at stop)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.unix_path.unlink()


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


# sun_path holds 108 bytes on Linux, the last one a NUL.
MAX_UNIX_PATH = 107


def bind_unix(path: Path, mode: int = 0o660) -> socket.socket:
    """A listening Unix socket at ``path`` (a stale socket file of a dead daemon is replaced)."""
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH:
        raise ConfigError(f"socket path {path} is {size} bytes, longer than a Unix socket path may be "
                          f"({MAX_UNIX_PATH}); choose a shorter --socket / CACHEMGR_SOCKET")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _socket_in_use(path):
            raise ConfigError(f"socket {path} is in use by another daemon; stop it or set --socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror}; fix --socket or its directory") from None
    return sock


def bind_tcp(address: str) -> list[socket.socket]:
    """Listening sockets for ``HOST:PORT`` (every address the host name resolves to)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"listen address {address}: {exc.strerror}; use an IP address or a known host") from None
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in out:
            sock.close()
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}; pick another --listen") from None
    return out


def bind_all(settings: Settings, env: Mapping[str, str]) -> Listeners:
    """Inherited sockets (socket activation), else the Unix socket plus any TCP addresses."""
    out = Listeners()
    inherited = systemd.listen_sockets(env)
    if inherited:
        out.sockets = inherited
        out.where = [f"fd:{s.fileno()}" for s in inherited]
        return out
    assert settings.socket is not None
    try:
        out.sockets.append(bind_unix(settings.socket))
        out.unix_path = settings.socket
        out.where.append(f"unix:{settings.socket}")
        for addr in settings.listen:
            out.sockets += bind_tcp(addr)
            out.where.append(f"tcp:{addr}")
    except BaseException:
        out.close()
        raise
    return out
