"""What the fake origin was asked and what it sent: ``Request`` records and per-route body counters."""

from __future__ import annotations

import threading
from typing import NamedTuple

from aiohttp import web

from .origin_catalog import ArchiveKind, Kind


class Request(NamedTuple):
    """One handled request: ``(kind, method, path_qs, range_header_or_None, status)``."""

    kind: str
    method: str
    path_qs: str
    range: str | None
    status: int


class Records:
    """The request log and counters of a ``FakeOrigin`` (a base class of it; thread-safe).

    ``requests`` lists every handled request (status 0 = connection dropped). ``started(kind)``
    and ``completed(kind)`` count archive bodies on GET, begun / fully sent, 200 and 206 alike;
    HEAD, errors and 304/416 do not count.
    """

    def __init__(self) -> None:
        self._records_lock = threading.Lock()
        self.requests: list[Request] = []
        self._started: dict[str, int] = {}
        self._completed: dict[str, int] = {}

    def started(self, kind: ArchiveKind = "gcs") -> int:
        """Archive bodies (200 or 206, GET) whose sending began."""
        with self._records_lock:
            return self._started.get(kind, 0)

    def completed(self, kind: ArchiveKind = "gcs") -> int:
        """Archive bodies (200 or 206, GET) sent to the last byte."""
        with self._records_lock:
            return self._completed.get(kind, 0)

    def requests_of(self, kind: Kind) -> list[Request]:
        with self._records_lock:
            return [r for r in self.requests if r.kind == kind]

    def reset_counters(self) -> None:
        with self._records_lock:
            self.requests.clear()
            self._started.clear()
            self._completed.clear()

    # -- for the routes
    def record(self, kind: str, request: web.Request, status: int) -> None:
        with self._records_lock:
            self.requests.append(
                Request(kind, request.method, request.path_qs, request.headers.get("Range"), status)
            )

    def count_started(self, kind: str) -> None:
        with self._records_lock:
            self._started[kind] = self._started.get(kind, 0) + 1

    def count_completed(self, kind: str, n: int = 1) -> None:
        with self._records_lock:
            self._completed[kind] = self._completed.get(kind, 0) + n
