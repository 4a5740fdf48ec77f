"""One fetch of a model across every node of a shared store: the fetch lease and the waiting.

A pull that misses takes the lease ``fetch-<sha1(canonical handle)>``. The holder fetches and
publishes, writing tensorflow_hub's lock files meanwhile (cluster/hublock.py); any other node
asking for the same model waits for the holder's ref to appear instead of downloading, and
takes over when the lease goes stale (its holder died or hung). Every filesystem call runs in a
thread: this code runs on the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib

from cachemgr.cluster.hublock import HubLocks
from cachemgr.cluster.lease import Lease, LeaseKeeper, is_stale, lease_path, read_lease, try_acquire
from cachemgr.handles import Handle
from cachemgr.settings import Settings
from cachemgr.store.aio import StoreIO
from cachemgr.store.objects import Store


def fetch_lease_name(handle: Handle) -> str:
    return "fetch-" + hashlib.sha1(handle.canonical.encode("utf-8")).hexdigest()


class Claim:
    """This process holds the fetch of one model: the lease (renewed) and hub's lock files."""

    def __init__(self, settings: Settings, lease: Lease, locks: HubLocks) -> None:
        self.lease = lease
        self.locks = locks
        self.keeper = LeaseKeeper(lease, settings.lease_timeout, on_renew=locks.refresh)

    def start(self) -> None:
        self.locks.take()
        self.keeper.start()

    def check(self) -> None:
        """Before publishing: LeaseLostError if another node took the fetch over."""
        self.lease.check()

    def finish(self) -> None:
        """Stop renewing, release the lease, and remove hub's locks (the view entry is out by now)."""
        self.keeper.stop()
        self.locks.release()


class Coordinator:
    """Claims fetches for one process (a CLI run or a daemon)."""

    def __init__(self, settings: Settings, store: Store, io: StoreIO) -> None:
        self.settings = settings
        self.store = store
        self.io = io

    def poll_interval(self) -> float:
        return min(1.0, max(self.settings.lease_timeout / 10.0, 0.05))

    async def claim(self, handle: Handle) -> Claim | None:
        """Take the fetch of ``handle``; None once another node holds it (the caller waits)."""
        lease = await self.io.run(functools.partial(
            try_acquire, self.store.home, fetch_lease_name(handle), node=self.settings.node_id,
            timeout=self.settings.lease_timeout, what=handle.canonical), what=f"take the fetch lease of {handle.asked}")
        if lease is None:
            return None
        claim = Claim(self.settings, lease, HubLocks(self.store, handle.aliases()))
        await self.io.run(claim.start, what=f"write hub's lock files for {handle.asked}")
        return claim

    async def wait_for_holder(self, handle: Handle) -> None:
        """Return once the other holder's lease is gone or stale (its ref may be there now)."""
        path = lease_path(self.store.home, fetch_lease_name(handle))
        node, timeout = self.settings.node_id, self.settings.lease_timeout
        while True:
            state = await self.io.run(read_lease, path, what=f"read the fetch lease of {handle.asked}")
            if state is None or await self.io.run(is_stale, state, timeout, node, what="check a lease's holder"):
                return
            await asyncio.sleep(self.poll_interval())
