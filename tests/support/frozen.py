"""A real blocking filesystem for the hung-store tests: an ext4 image, frozen with ``fsfreeze``.

While it is frozen, every write to it blocks in the kernel (uninterruptible, like a FUSE
``rename`` GlusterFS never answers), and reads still succeed. ``FrozenFs`` is the image, mounted
on a loop device at ``mnt``; ``freeze()`` and ``thaw()`` (a thread thaws it after ``WATCHDOG``
seconds whatever the test is doing); ``frozen_filesystem(root)`` makes one and always removes it.
``until(what, check)`` polls a condition (a wait, not a timing assertion).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WATCHDOG = 240.0  # seconds after which the store is thawed whatever the test is doing


class FrozenFs:
    """An ext4 image mounted on a loop device, which ``freeze()`` blocks for writing."""

    def __init__(self, root: Path) -> None:
        for tool, package in (("fsfreeze", "util-linux"), ("mkfs.ext4", "e2fsprogs"), ("mount", "mount")):
            assert shutil.which(tool), f"{tool} is missing: install the Debian package {package}"
        self.image = root / "store.img"
        self.mnt = root / "mnt"
        self.mnt.mkdir()
        with self.image.open("wb") as fh:
            fh.truncate(96 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        done = subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)], capture_output=True, text=True)
        assert done.returncode == 0, f"cannot loop-mount an ext4 image (needs root and /dev/loop*): {done.stderr}"
        self.frozen = False
        self._timer: threading.Timer | None = None

    def freeze(self) -> None:
        subprocess.run(["fsfreeze", "-f", str(self.mnt)], check=True)
        self.frozen = True
        # A bug that touched the store from this process would hang it in D state, where no
        # finally clause runs: a thread thaws the store after WATCHDOG seconds regardless.
        self._timer = threading.Timer(WATCHDOG, self.thaw)
        self._timer.daemon = True
        self._timer.start()

    def thaw(self) -> None:
        if self.frozen:
            self.frozen = False
            subprocess.run(["fsfreeze", "-u", str(self.mnt)], check=False)
        if self._timer is not None:
            self._timer.cancel()

    def remove(self) -> None:
        self.thaw()
        if subprocess.run(["umount", str(self.mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)


@contextlib.contextmanager
def frozen_filesystem(root: Path) -> Iterator[FrozenFs]:
    """A fresh ``FrozenFs`` under ``root`` (not frozen yet), thawed and unmounted after."""
    fs = FrozenFs(root)
    try:
        yield fs
    finally:
        fs.remove()


def until(what: str, check: Any, timeout: float = 120.0) -> Any:
    """Poll ``check()`` until it returns something true (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


async def until_async(check: Any) -> Any:
    """``until`` for a test's own event loop: polls without blocking it."""
    for _ in range(1200):
        got = check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("gave up waiting")
