"""curl's low-speed rule (``--speed-limit``/``--speed-time``) for one HTTP response body.

Its own module so that http.py stays readable; http.py is its only user.
"""

from __future__ import annotations

import asyncio

import aiohttp

from cachemgr.settings import Settings


def low_speed_on(settings: Settings) -> bool:
    """Whether the rule applies: ``low_speed_limit`` or ``low_speed_time`` 0 turns it off."""
    return settings.low_speed_limit > 0 and settings.low_speed_time > 0


class LowSpeed:
    """curl's --speed-limit/--speed-time rule over one response body, checked by a timer.

    Each window of ``low_speed_time`` seconds must bring ``low_speed_limit * low_speed_time``
    bytes, else the transfer is a stall: the response is closed, which ends the read in
    progress (``stalled`` tells why). Time spent in the sink (disk, inflate, untar) is ours, not
    the network's, and is not counted. The timer fires about once a window; per chunk the cost
    is an addition and two clock reads. A window that ends fast enough starts the next one, so a
    transfer stops at most two windows after its bytes stop coming.
    """

    def __init__(self, settings: Settings, resp: aiohttp.ClientResponse) -> None:
        self.seconds = settings.low_speed_time
        self.need = settings.low_speed_limit * settings.low_speed_time
        self.resp = resp
        self.got = 0
        self.stalled = False
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._held = 0.0
        self._held_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        if low_speed_on(settings):
            self._timer = self._loop.call_later(self.seconds, self._check)

    def hold(self) -> None:
        self._held_since = self._loop.time()

    def release(self) -> None:
        if self._held_since is not None:
            self._held += self._loop.time() - self._held_since
            self._held_since = None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._loop.time()
        if self.got >= self.need:  # fast enough: the next window starts now
            self.got, self._start, self._held = 0, now, 0.0
            if self._held_since is not None:
                self._held_since = now
            delay = self.seconds
        else:
            held = self._held + (now - self._held_since if self._held_since is not None else 0.0)
            left = self.seconds - (now - self._start - held)
            if left <= 0 and self._held_since is None:
                self.stalled = True
                self._timer = None
                self.resp.close()
                return
            delay = max(left, self.seconds / 10)
        self._timer = self._loop.call_later(delay, self._check)
