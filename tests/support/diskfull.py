"""A small real disk that fills up: a tmpfs, bind-mounted as a store's home, and a filler file.

``SmallDisk`` mounts a tmpfs of ``size`` at ``root/disk`` and bind-mounts ``root/disk/store`` on
``root/home``, so that the store (``home``) lives on the small disk while ``home.parent``
(where the daemon runner puts its socket and log) does not. ``fill()`` writes ``disk/filler``
until the disk is full; ``free()`` removes it. The tests run as root (``mount`` needs it); a
failed mount is a failure, not a skip.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

CHUNK = 64 * 1024


class SmallDisk:
    def __init__(self, root: Path, size: str) -> None:
        self.root = root
        self.disk = root / "disk"
        self.home = root / "home"
        self.filler = self.disk / "filler"
        self.size = size
        self._mounted: list[Path] = []

    def __enter__(self) -> SmallDisk:
        assert shutil.which("mount") and shutil.which("umount"), "mount/umount (util-linux / mount) are required"
        self.disk.mkdir(parents=True)
        self.home.mkdir()
        self._mount(["-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.disk)], self.disk)
        (self.disk / "store").mkdir()
        self._mount(["--bind", str(self.disk / "store"), str(self.home)], self.home)
        return self

    def _mount(self, args: list[str], where: Path) -> None:
        proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"mount {' '.join(args)} failed (the tests need root): {proc.stderr}"
        self._mounted.append(where)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for where in reversed(self._mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)
        self._mounted.clear()

    def fill(self) -> int:
        """Write the filler until the disk refuses another byte; returns its size."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        block = b"\xa5" * CHUNK
        try:
            for size in (CHUNK, 4096, 512, 1):
                while True:
                    try:
                        os.write(fd, block[:size])
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)
        return self.filler.stat().st_size

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def outside_store(self) -> list[str]:
        """What is on the small disk besides the store and the filler (must stay empty)."""
        return sorted(n for n in os.listdir(self.disk) if n not in ("store", "filler"))
