"""Which upstream to try next: ordered groups with failover, CVMFS style (pure; no I/O).

``upstreams`` is a list of groups. Within a group the members are replicas, tried in a random
order (load balance: many nodes spread over the group); when every member of a group has
failed, the next group is tried. An upstream that failed (a refused or timed-out connection, an
HTTP error, a broken transfer) is *dead* for a back-off that doubles with each failure in a
row (``first_backoff`` up to ``max_backoff``; CVMFS retries a failed proxy after 5 minutes)
and left out of plans meanwhile, so the next fetch skips it at once; once its back-off is over it
is tried again, and a success forgets its failures. When every upstream is dead, the plan
holds them all anyway, in group order: better a connect timeout than not trying.

:class:`Failover` is that memory, one per process (the puller owns it and passes it down), with
the random source (pass a seeded ``random.Random`` for repeatable order) and the clock
(``now``, monotonic seconds) given by the caller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cachemgr.setting_values import UpstreamGroup, masked, proxy_for

FIRST_BACKOFF = 10.0
MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class Attempt:
    """One try: the upstream's URL, the HTTP proxy to reach it through (None: direct), its group."""

    url: str
    proxy: str | None
    group: int

    def describe(self) -> str:
        through = f", through {masked(self.proxy)}" if self.proxy else ""  # never a proxy's password
        return f"{masked(self.url)} (group {self.group + 1}{through})"


@dataclass
class Failover:
    """A process's memory of dead upstreams and its random source; see the module docstring."""

    rng: random.Random = field(default_factory=random.Random)
    first_backoff: float = FIRST_BACKOFF
    max_backoff: float = MAX_BACKOFF
    dead: dict[str, tuple[float, int]] = field(default_factory=dict)  # url -> (dead until, failures)

    def is_dead(self, url: str, now: float) -> bool:
        entry = self.dead.get(url)
        return entry is not None and now < entry[0]

    def plan(self, groups: tuple[UpstreamGroup, ...], default_proxy: str | None, now: float,
             no_proxy: tuple[str, ...] = ()) -> list[Attempt]:
        """The attempts for one fetch, in order: each group's live members shuffled, group after group.
        A group's own proxy always applies; the default one not to hosts ``no_proxy`` names."""
        every: list[Attempt] = []
        live: list[Attempt] = []
        for index, group in enumerate(groups):
            members = list(group.urls)
            self.rng.shuffle(members)
            for url in members:
                attempt = Attempt(url, group.proxy or proxy_for(url, default_proxy, no_proxy), index)
                every.append(attempt)
                if not self.is_dead(url, now):
                    live.append(attempt)
        return live or every

    def failed(self, url: str, now: float) -> float:
        """Record a failure of ``url``; returns the back-off (seconds it is skipped for)."""
        failures = self.dead.get(url, (0.0, 0))[1] + 1
        backoff = min(self.first_backoff * (1 << min(failures - 1, 30)), self.max_backoff)
        self.dead[url] = (now + backoff, failures)
        return backoff

    def succeeded(self, url: str) -> bool:
        """Forget ``url``'s failures; whether it had any (it is back)."""
        return self.dead.pop(url, None) is not None

