"""A node's GlusterFS mount made to hang for real: its FUSE client process stopped (SIGSTOP).

Every call on a FUSE mount is a request its client process (``glusterfs``) reads from
``/dev/fuse`` and answers. Stopped, the client reads nothing: every call on that node's mount,
read or write, waits in the kernel (``request_wait_answer``) until it runs again, as on a
GlusterFS, NFS or Lustre server gone away. Other nodes have their own clients and go on.
``hung(node)`` stops the client of ``node`` (tests/support/gluster.py) and always resumes it;
``fuse_waits(pid)`` counts the threads of ``pid`` waiting in the kernel for a FUSE answer.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from .daemons import stop_process
from .gluster import Node


def fuse_client_pid(node: Node) -> int:
    """The pid of the ``glusterfs`` FUSE client serving ``node``'s mount (in its mount namespace)."""
    ns = os.readlink(f"/proc/{node.holder.pid}/ns/mnt")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "glusterfs" and os.readlink(entry / "ns" / "mnt") == ns:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            else:
                continue
        except OSError:
            continue
        if os.fsencode(node.mount) in cmdline:
            found.append(int(entry.name))
    assert len(found) == 1, f"{node.name}: expected one glusterfs client for {node.mount}, found {found}"
    return found[0]


@contextlib.contextmanager
def hung(node: Node) -> Iterator[int]:
    """``node``'s mount hangs (its FUSE client stopped) inside the block; yields the client's pid."""
    pid = fuse_client_pid(node)
    try:
        stop_process(pid)
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def fuse_waits(pid: int) -> int:
    """How many threads of ``pid`` wait in the kernel for a FUSE answer (their ``wchan``)."""
    n = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
        except OSError:
            continue
        n += "fuse" in wchan or wchan == "request_wait_answer"
    return n
