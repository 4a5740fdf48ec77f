"""The two small pieces of the systemd protocol the daemon speaks: sd_notify and LISTEN_FDS.

Both are a few lines of stdlib socket code; the python bindings (systemd-python) need
libsystemd headers to build, which a pure-Python service should not require.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping

from cachemgr.errors import ConfigError

SD_LISTEN_FDS_START = 3


def notify(state: str, env: Mapping[str, str]) -> bool:
    """Send ``state`` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not under systemd."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


def listen_sockets(env: Mapping[str, str]) -> list[socket.socket]:
    """Sockets passed by socket activation ($LISTEN_PID/$LISTEN_FDS), if meant for us."""
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(env.get("LISTEN_FDS", "0") or 0)
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError(f"fd {fd} is not a socket")
        except OSError as exc:
            raise ConfigError(f"socket activation: LISTEN_FDS={count} but {exc}; check the .socket unit") from None
        os.set_inheritable(fd, False)
        out.append(socket.socket(fileno=fd))
    return out
