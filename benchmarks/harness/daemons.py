"""``cachemgr daemon`` for the benchmarks: the tests' runner (``tests/support/daemons.py``), started,
checked, and measured.

Not imported by ``benchmarks.harness`` itself: ``tests.support`` brings in the fake origin
(aiohttp), which the benchmarks' children have no use for.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.daemons import Daemon as _TestsDaemon

from .children import ChildError
from .measure import child_pids, tree_cpu_seconds


class Daemon(_TestsDaemon):
    """``cachemgr daemon --socket HOME/NAME.sock`` (``CACHEMGR_HOME=HOME``), a separate process, ready and healthy.

    ``name`` tells several daemons on one store apart: each gets its own socket (``HOME/NAME.sock``,
    default ``HOME/d.sock``). ``workers`` is the daemon's ``workers`` setting (``N`` or ``auto``, as
    ``CACHEMGR_WORKERS``; None: the daemon's default). The daemon's CPU (``cpu_seconds``) includes
    its worker processes, which are its children. Raises ChildError when it does not start.
    """

    def __init__(self, home: Path, env: dict[str, str], start_timeout: float = 60.0, workers: str | None = None,
                 name: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        extra = {"CACHEMGR_WORKERS": workers} if workers is not None else {}
        super().__init__(home, {**env, **extra}, sock=home / f"{name or 'd'}.sock")
        try:
            self.wait_ready(start_timeout)
        except AssertionError as exc:
            self.stop()
            raise ChildError(f"daemon did not start; log {self.log}:\n{str(exc)[-3000:]}") from None
        status, doc = self.call("GET", "/v1/health")
        if status != 200:
            self.stop()
            raise ChildError(f"daemon health check said {status} {doc}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """The daemon's live child processes (its workers), from /proc."""
        return child_pids(self.proc.pid)

    def cpu_split(self) -> tuple[float, float]:
        """CPU seconds so far of the daemon process itself (plus children it reaped, e.g. a worker
        that crashed) and of its live descendants (the workers)."""
        per = tree_cpu_seconds(self.proc.pid)
        own = per.pop(self.proc.pid, 0.0)
        return own, sum(per.values())

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the daemon and its workers (every process of its tree)."""
        return sum(self.cpu_split())
