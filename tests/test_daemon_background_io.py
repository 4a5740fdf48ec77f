"""The daemon's background jobs (prune, scrub slice, adoption) on a hung store: reported, not silent.

They run outside the request path, as store jobs (``StoreIO.job``): threads of their own, in the
same table as the request calls. A job is stuck when its thread gets no CPU time for
``stuck_io_after`` (not merely for running long: a prune of a big store takes minutes). The store
is an ext4 image frozen with ``fsfreeze`` (tests/support/frozen.py): its writes block in the
kernel, its reads answer. The daemon starts on the frozen store (its start-up reads only: the
store exists and no dead run left anything), its first sweep starts the job, the job blocks in
its first write, and ``/v1/health`` must say ``degraded`` naming it, ``cachemgr status`` too.
Thawed, the job ends and health is ``ok`` again.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachemgr.client.daemon_client import call
from cachemgr.store.aio import StoreIO, cpu_time
from tests.support.cli import Cli
from tests.support.daemons import Daemon
from tests.support.frozen import FrozenFs, frozen_filesystem, until, until_async

CACHED = "https://tfhub.dev/google/mymul/1"
ADOPTED = "https://tfhub.dev/google/adopted/1"  # what plain hub "downloaded" into the view


@pytest.fixture
def frozen_fs(tmp_path: Path) -> Iterator[FrozenFs]:
    with frozen_filesystem(tmp_path) as fs:
        yield fs


def _hub_download(home: Path, handle: str, snapshot: str) -> None:
    """A directory in the view as plain tensorflow_hub leaves it (the files, then its descriptor)."""
    name = hashlib.sha1(handle.encode()).hexdigest()
    shutil.copytree(snapshot, home / "view" / name)
    (home / "view" / f"{name}.descriptor.txt").write_text(f"Module: {handle}\nDownloaded by plain hub\n")


# What each job's case sets, and the words of its ``what``.
JOBS = {
    "prune": ({"CACHEMGR_PRUNE_MAX_SIZE": "1G"}, "prune"),
    "scrub": ({"CACHEMGR_SCRUB_RATE": "100M"}, "scrub slice"),
    "adopt": ({}, "adopt view/"),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_a_background_job_hung_on_the_store_is_reported(job: str, cli: Cli, frozen_fs: FrozenFs,
                                                         tmp_path: Path) -> None:
    home = frozen_fs.mnt / "store"
    env = {"CACHEMGR_HOME": str(home)}
    pulled = cli("pull", CACHED, "--json", env=env)
    assert pulled.code == 0, pulled.err
    settings, words = JOBS[job]
    if job == "adopt":
        snapshot = cli("path", CACHED, env=env).out.strip()
        _hub_download(home, ADOPTED, snapshot)
    run = tmp_path / "run"  # socket, ready file, log and prefetch list: on a disk that stays writable
    run.mkdir()
    denv = {**cli.env, "CACHEMGR_STUCK_IO_AFTER": "1s", "CACHEMGR_WORKERS": "1",
            "CACHEMGR_PREFETCH_FILE": str(run / "prefetch.toml"), **settings}
    frozen_fs.freeze()
    d = Daemon(home, denv, rundir=run)
    sock = str(d.sock)
    try:
        d.wait_ready(60)  # start-up only reads: it is not held up by the frozen store

        def stuck_job() -> list[dict[str, Any]]:
            code, doc = call(sock, "GET", "/v1/health", timeout=30)
            assert code == 200, doc
            return [c for c in doc.get("stuck_io", []) if c.get("job") and c["what"].startswith(words)]

        (stuck, *_) = until(f"health to report the {job} job stuck", stuck_job)
        assert stuck["thread"].startswith("storeio-job") and stuck["idle"] >= 1, stuck
        assert call(sock, "GET", "/v1/health", timeout=30)[1]["status"] == "degraded"
        until("the daemon to log the stuck job", lambda: any(
            "background job stuck" in line and words in line for line in d.output().splitlines()))
        shown = cli("status", env={"CACHEMGR_SOCKET": sock, "CACHEMGR_HOME": str(tmp_path / "elsewhere")})
        assert shown.code == 0 and "STUCK store job" in shown.out and "without CPU" in shown.out, shown
        assert words in shown.out, shown
        frozen_fs.thaw()
        until("health to be ok again", lambda: call(sock, "GET", "/v1/health", timeout=30)[1]["status"] == "ok")
        if job == "adopt":  # the thawed job does its work
            entry = home / "view" / hashlib.sha1(ADOPTED.encode()).hexdigest()
            until("the adoption to finish", entry.is_symlink)
    finally:
        frozen_fs.thaw()
        d.stop()


# -- StoreIO's jobs in-process: stuck is "no CPU time", not "long" -----------------------------------

def test_a_job_is_stuck_when_it_gets_no_cpu_time_not_when_it_runs_long() -> None:
    assert cpu_time(threading.get_native_id()) is not None, "no /proc/self/task/<tid>/schedstat on this kernel"

    async def main() -> None:
        # Generous: under a loaded CI a spinning thread can wait a while for a core, and a job
        # counts as stuck only once it has had no CPU time at all for this long.
        io = StoreIO(stuck_after=3.0, threads=2)
        release = threading.Event()
        spun = [0]

        def spin() -> int:  # long, but working all along (a prune walking a big store)
            while not release.is_set():
                spun[0] += 1
            return spun[0]

        blocked = asyncio.ensure_future(io.job(release.wait, what="prune (blocked)"))
        busy = asyncio.ensure_future(io.job(spin, what="scrub slice (busy)"))
        stuck = await until_async(lambda: io.stuck())
        assert [c["what"] for c in stuck] == ["prune (blocked)"] and stuck[0]["job"], stuck
        for _ in range(5):  # a few more samples: the busy one is never among them
            await asyncio.sleep(0.75)
            assert [c["what"] for c in io.stuck()] == ["prune (blocked)"], io.stuck()
        assert io.newly_stuck()[0]["what"] == "prune (blocked)" and io.newly_stuck() == []  # logged once
        release.set()
        assert await blocked is True and await busy > 0
        assert io.stuck() == []
        io.close()

    asyncio.run(main())

