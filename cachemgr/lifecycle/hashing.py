"""Fast sha256 of many files: big reads into a reused buffer, one thread per core.

hashlib releases the GIL while it hashes a large buffer, so a small thread pool keeps every
core busy. Files are read with large ``readinto`` calls after ``posix_fadvise(SEQUENTIAL)``.
Results come back in input order with a bounded number of reads in flight.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

CHUNK = 4 << 20
_local = threading.local()


@dataclass(frozen=True)
class Hashed:
    key: str
    digest: str | None  # None: missing or unreadable
    size: int
    error: str = ""


def sha256_file(path: str) -> tuple[str, int]:
    """(hex sha256, size) of ``path``; OSError if it cannot be read."""
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
    view = memoryview(buf)
    digest = hashlib.sha256()
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            digest.update(view[:n])
            total += n
    finally:
        os.close(fd)
    return digest.hexdigest(), total


def _one(key: str, path: str) -> Hashed:
    try:
        digest, size = sha256_file(path)
    except FileNotFoundError:
        return Hashed(key, None, 0, "missing")
    except OSError as exc:
        return Hashed(key, None, 0, exc.strerror or str(exc))
    return Hashed(key, digest, size)


class Throttle:
    """Sleeps so that the average rate stays under ``rate`` bytes/s (None: no limit)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.done = 0

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        if self.rate:
            ahead = self.done / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def hash_many(
    items: Iterable[tuple[str, str]], workers: int | None = None, stop: Callable[[], bool] | None = None,
    throttle: Throttle | None = None,
) -> Iterator[Hashed]:
    """Hash ``(key, path)`` items concurrently; yield results in input order.

    ``stop()`` is checked before each new item is started; items already started finish.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    window = workers * 4
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        pending: deque[Future[Hashed]] = deque()
        source = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window and not (stop and stop()):
                try:
                    key, path = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.submit(_one, key, path))
            if not pending:
                return
            result = pending.popleft().result()
            if throttle is not None:
                throttle(result.size)
            yield result
