"""The fake origin's faults: failing, dropping, cutting, holding and delaying responses, and its clock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .origin_catalog import ArchiveKind, Kind


class _Queued(Protocol):
    remaining: int | None


_Q = TypeVar("_Q", bound=_Queued)


@dataclass
class Delay:
    seconds: float
    remaining: int | None


@dataclass
class Failure:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    remaining: int | None  # None = forever


@dataclass
class Cut:
    after: int
    remaining: int | None


@dataclass
class Hold:
    after: int
    event: threading.Event
    remaining: int | None


class Faults:
    """The knobs of a ``FakeOrigin`` (a base class of it; thread-safe, read by the next requests).

    ``fail()``, ``truncate()``, ``hold()`` and ``delay()`` queue up per route kind; ``down`` drops
    every connection; ``wrong_md5`` sends a wrong md5 in ``x-goog-hash``; ``advance()`` moves the
    clock that signs and checks storage URLs. ``reset_faults()`` clears them all.
    """

    def __init__(self) -> None:
        self._faults_lock = threading.Lock()
        self.down = False
        self.wrong_md5 = False
        self._clock_offset = 0.0
        self._fails: dict[str, list[Failure]] = {}
        self._cuts: dict[str, list[Cut]] = {}
        self._holds: dict[str, list[Hold]] = {}
        self._delays: dict[str, list[Delay]] = {}

    def fail(
        self,
        kind: Kind,
        status: int,
        times: int | None = 1,
        body: bytes = b"",
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` (None = all, until ``reset``) requests of ``kind`` get ``status``.

        ``status=0`` drops the connection without a response. Use status 200 with
        ``html_error_page()`` and ``content_type="text/html"`` for a captive-portal page.
        Failures queue up in order.
        """
        with self._faults_lock:
            self._fails.setdefault(kind, []).append(
                Failure(status, body, content_type, dict(headers or {}), times)
            )

    def truncate(self, kind: ArchiveKind, after_bytes: int, times: int | None = 1) -> None:
        """The next ``times`` archive bodies of ``kind`` stop after ``after_bytes`` bytes.

        Headers carry the full Content-Length (of the range for 206), then ``after_bytes``
        bytes are sent and the connection is closed.
        """
        with self._faults_lock:
            self._cuts.setdefault(kind, []).append(Cut(after_bytes, times))

    def hold(
        self, kind: ArchiveKind, after_bytes: int = 0, times: int | None = 1
    ) -> threading.Event:
        """The next ``times`` archive bodies of ``kind`` pause after ``after_bytes`` bytes
        (headers already sent) until the returned event is set (``stop()`` sets it too)."""
        ev = threading.Event()
        with self._faults_lock:
            self._holds.setdefault(kind, []).append(Hold(after_bytes, ev, times))
        return ev

    def delay(self, kind: Kind, seconds: float, times: int | None = 1) -> None:
        """Sleep ``seconds`` before answering the next ``times`` requests of ``kind``."""
        with self._faults_lock:
            self._delays.setdefault(kind, []).append(Delay(seconds, times))

    def advance(self, seconds: float) -> None:
        """Move the server clock forward (signed URLs issued earlier expire)."""
        with self._faults_lock:
            self._clock_offset += seconds

    def now(self) -> float:
        """The server clock: real time plus every ``advance()``."""
        return time.time() + self._clock_offset

    def release_holds(self) -> None:
        """Set every hold's event, so that no body stays paused."""
        with self._faults_lock:
            for holds in self._holds.values():
                for h in holds:
                    h.event.set()

    def reset_faults(self) -> None:
        """Clear every knob (held bodies are released)."""
        self.release_holds()
        with self._faults_lock:
            self._fails.clear()
            self._cuts.clear()
            self._holds.clear()
            self._delays.clear()
            self._clock_offset = 0.0
        self.down = self.wrong_md5 = False

    # -- for the routes: one use of the first queued knob for ``kind`` (None if there is none)
    def take_failure(self, kind: str) -> Failure | None:
        return self._take(self._fails, kind)

    def take_cut(self, kind: str) -> Cut | None:
        return self._take(self._cuts, kind)

    def take_hold(self, kind: str) -> Hold | None:
        return self._take(self._holds, kind)

    def take_delay(self, kind: str) -> Delay | None:
        return self._take(self._delays, kind)

    def _take(self, table: dict[str, list[_Q]], kind: str) -> _Q | None:
        with self._faults_lock:
            queue = table.get(kind)
            if not queue:
                return None
            item = queue[0]
            if item.remaining is not None:
                item.remaining -= 1
                if item.remaining <= 0:
                    queue.pop(0)
            return item
