"""The daemon's store I/O off the event loop, and what ``/v1/health`` says of stuck calls.

Every store call of a coroutine goes through ``cachemgr.store.aio.StoreIO`` (``state.io``):
a bounded set of threads that records when each call started, so that one running longer than
``stuck_io_after`` is reported here, in ``/v1/status`` and in ``cachemgr status``, and logged.

File bodies are not served with ``aiohttp.web.FileResponse``. In aiohttp 3.x its ``stat`` and
``open`` run in the default executor (off the loop), but the body then goes out through
``loop.sendfile``, that is ``os.sendfile(2)`` on the event loop's own thread: the kernel reads
the file synchronously, and on a hung network mount that blocks the loop like any ``read``.
``immutable.py`` opens the file in a thread (without following links) and reads it there,
chunk by chunk, with ``pread``; the mirror's tar stream (``mirror_tar.py``) is read in store
threads too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachemgr.store.aio import StoreIO


def health_doc(io: StoreIO, base: Mapping[str, Any]) -> dict[str, Any]:
    """``/v1/health``: ``ok``, or ``degraded`` with the store calls stuck past ``stuck_io_after``
    (``what``, ``seconds``, ``thread``) and how many calls wait for a thread (``queued_io``).

    Degraded is still HTTP 200: the process answers, and hits whose files are readable are served.
    A 503 would make readiness checks (systemd units, load balancers, the tests' and benchmarks'
    harness) take the node out of service, and its clients would go to the origin themselves:
    the very load a hung store should not add. Monitoring alerts on ``status != "ok"``."""
    stuck = io.stuck()
    queued = io.queued
    doc = dict(base)
    doc["status"] = "degraded" if stuck else "ok"
    if stuck or queued:
        doc["stuck_io"] = stuck
        doc["queued_io"] = queued
    return doc
