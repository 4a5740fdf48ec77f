"""Store-wide work that one node at a time does (prune, rm): held under a renewed lease."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from cachemgr.cluster.lease import Lease, LeaseKeeper, lease_path, read_lease, try_acquire
from cachemgr.errors import StoreBusyError
from cachemgr.settings import Settings
from cachemgr.units import format_age


@contextmanager
def exclusive(settings: Settings, name: str, what: str) -> Iterator[Lease]:
    """Hold lease ``name`` for the block, renewed; StoreBusyError if a live holder has it."""
    lease = try_acquire(settings.home, name, node=settings.node_id, timeout=settings.lease_timeout, what=what)
    if lease is None:
        state = read_lease(lease_path(settings.home, name))
        who, busy = "another process", "store-wide work"
        if state is not None and state.record is not None:
            rec = state.record
            who = f"node {rec.node} (pid {rec.pid}, for {format_age(time.time() - rec.started)})"
            busy = rec.what or rec.name
        raise StoreBusyError(f"{who} is running {busy} on store {settings.home}, and {what} cannot run "
                             f"at the same time; retry when it is done (or after "
                             f"{format_age(settings.lease_timeout)} if it died)")
    with LeaseKeeper(lease, settings.lease_timeout) as held:
        yield held
