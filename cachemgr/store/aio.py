"""Store calls from an event loop, run in threads, and the calls that have been running too long.

On a network filesystem any syscall can block for minutes (a FUSE ``rename`` that GlusterFS
never answers, an NFS server gone away). An event loop that makes such a call stops answering
everything, health included. So a coroutine never touches the store itself: it awaits
``io.run(fn, *args, what="...")``, which runs ``fn`` on one of a bounded set of threads and
records when each call started, so that ``stuck()`` can name every call running longer than
``stuck_after`` seconds (``Settings.stuck_io_after``).

``later(key, fn, ...)`` is for best-effort writes nobody should wait on for long (last-use
records): one thread of their own, and at most one pending call per key, so a hung mount
costs one thread, not one per request.

``job(fn, ...)`` is for the long background work (a prune, a scrub slice, adopting a download,
the recovery at start-up): threads of their own, so that their minutes do not take the request
threads, recorded in the same table. A job may rightly run for minutes, so it is not stuck
for running long, but for making no progress: a thread that got no CPU time for
``stuck_after`` seconds (its ``/proc/self/task/<tid>/schedstat``, sampled by a thread of its
own while jobs run) is waiting on something, and a store job waits on nothing else for that
long but a hung filesystem. Without schedstat (a kernel without ``CONFIG_SCHED_INFO``) a job
counts from its start, like a call.

The threads are daemon threads, by hand, rather than ``concurrent.futures.ThreadPoolExecutor``:
that one joins its threads at interpreter exit, so a single call stuck on a hung mount would
keep a stopping process alive for as long as the mount hangs.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
DEFAULT_THREADS = 16  # store calls at once; the rest queue (and are counted in ``queued``)
JOB_THREADS = 4  # background jobs at once (prune and scrub take turns; adoptions may overlap)


@dataclass(frozen=True)
class Call:
    """A store call in progress."""

    what: str
    started: float  # time.monotonic()
    thread: str
    tid: int = 0  # the thread's native id (its /proc/self/task entry)
    job: bool = False  # a background job (``StoreIO.job``): stuck when it makes no progress

    def to_json(self, now: float, since: float) -> dict[str, Any]:
        """``since``: when it last made progress (a call: its start)."""
        doc: dict[str, Any] = {"what": self.what, "seconds": round(now - self.started, 1), "thread": self.thread}
        if self.job:
            doc["job"] = True
            doc["idle"] = round(now - since, 1)  # seconds without CPU time: waiting on the store
        return doc


def cpu_time(tid: int) -> int | None:
    """Nanoseconds thread ``tid`` of this process has run on a CPU, None if the kernel does not say.

    procfs is answered by the kernel itself, never by a store's filesystem."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_Job = tuple[Future[Any], str, Callable[..., Any], tuple[Any, ...]]


class _Lane:
    """Up to ``threads`` daemon threads taking jobs from one queue, started as needed.

    A thread is started whenever no idle one is waiting for the new job, so a call queues only
    when all ``threads`` are busy (on a hung mount: stuck), never behind one stuck call."""

    def __init__(self, owner: StoreIO, name: str, threads: int, job: bool = False) -> None:
        self.owner = owner
        self.name = name
        self.job = job
        self.max_threads = threads
        self.jobs: collections.deque[_Job] = collections.deque()
        self.threads: list[threading.Thread] = []
        self.waiting = 0  # threads idle in wait()
        self.cond = threading.Condition()
        self.closed = False

    def submit(self, what: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        with self.cond:
            if self.closed:
                raise RuntimeError(f"store I/O is shut down (asked for {what})")
            self.jobs.append((future, what, fn, args))
            self.owner.queued_more(1)
            if self.waiting >= len(self.jobs):
                self.cond.notify()
            elif len(self.threads) < self.max_threads:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self.threads)}", daemon=True)
                self.threads.append(thread)
                thread.start()
        return future

    def _next(self) -> _Job | None:
        with self.cond:
            while not self.jobs and not self.closed:
                self.waiting += 1
                self.cond.wait()
                self.waiting -= 1
            return self.jobs.popleft() if self.jobs else None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            future, what, fn, args = job
            self.owner.queued_more(-1)
            if future.set_running_or_notify_cancel():
                token = self.owner.begin(what, job=self.job)
                try:
                    result = fn(*args)
                except BaseException as exc:  # handed to the awaiting coroutine
                    self.owner.end(token)  # before the caller wakes: it sees the call as done
                    future.set_exception(exc)
                else:
                    self.owner.end(token)
                    future.set_result(result)
                    del result
            del job, future, fn, args  # no reference kept to a result while idle

    def close(self) -> None:
        """Threads finish the jobs queued, then exit."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class StoreIO:
    """Blocking store calls for coroutines: bounded threads, each call's start recorded."""

    def __init__(self, stuck_after: float, threads: int = DEFAULT_THREADS, name: str = "storeio") -> None:
        self.stuck_after = stuck_after
        self._lock = threading.Lock()
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count()
        self._queued = 0
        self._reported: set[int] = set()
        self._pool = _Lane(self, name, threads)
        self._background = _Lane(self, f"{name}-later", 1)
        self._jobs = _Lane(self, f"{name}-job", JOB_THREADS, job=True)
        self._later: dict[str, Future[Any]] = {}
        self._progress: dict[int, tuple[int | None, float]] = {}  # job token: (CPU ns, when it last grew)
        self._sampling = False

    # -- for coroutines ----------------------------------------------------------------------
    async def run(self, fn: Callable[[*Ts], T], *args: *Ts, what: str) -> T:
        """``fn(*args)`` on a store thread; ``what`` names the call in ``stuck()`` ("read ref <handle>")."""
        result: T = await asyncio.wrap_future(self._pool.submit(what, fn, args))
        return result

    async def job(self, fn: Callable[[*Ts], T], *args: *Ts, what: str) -> T:
        """``fn(*args)``, a long background job ("prune", "scrub slice"), on a job thread."""
        result: T = await asyncio.wrap_future(self._jobs.submit(what, fn, args))
        return result

    def submit(self, fn: Callable[[*Ts], Any], *args: *Ts, what: str) -> Future[Any]:
        """``fn(*args)`` on a store thread, not waited for (closing a descriptor, say)."""
        return self._pool.submit(what, fn, args)

    def later(self, key: str, fn: Callable[[*Ts], Any], *args: *Ts, what: str) -> Future[Any] | None:
        """Run ``fn(*args)`` on the background thread, unless a call for ``key`` is still pending:
        then None (that one will do). Call it from the loop's thread. The future may be ignored."""
        with self._lock:
            pending = self._later.get(key)
            if pending is not None and not pending.done():
                return None
        future = self._background.submit(what, fn, args)
        with self._lock:
            self._later[key] = future
        future.add_done_callback(lambda f: self._forget(key, f))
        return future

    def _forget(self, key: str, future: Future[Any]) -> None:
        with self._lock:
            if self._later.get(key) is future:
                del self._later[key]

    # -- what is running ---------------------------------------------------------------------
    def _stuck(self, now: float) -> list[tuple[int, Call, float]]:
        """(token, call, since) of the stuck calls, oldest first: a call running, or a job idle,
        for ``stuck_after`` seconds."""
        out = []
        with self._lock:
            for token, call in sorted(self._calls.items(), key=lambda kv: kv[1].started):
                since = self._progress.get(token, (None, call.started))[1] if call.job else call.started
                if now - since >= self.stuck_after:
                    out.append((token, call, since))
        return out

    def stuck(self) -> list[dict[str, Any]]:
        """The calls running (jobs: idle) longer than ``stuck_after``, oldest first (JSON-ready)."""
        now = time.monotonic()
        return [call.to_json(now, since) for _token, call, since in self._stuck(now)]

    def newly_stuck(self) -> list[dict[str, Any]]:
        """Like ``stuck()``, but each call once only (for a log line when it crosses the line)."""
        now = time.monotonic()
        out = []
        for token, call, since in self._stuck(now):
            with self._lock:
                if token in self._reported:
                    continue
                self._reported.add(token)
            out.append(call.to_json(now, since))
        return out

    @property
    def queued(self) -> int:
        """Calls waiting for a thread (all of them busy: on a hung mount, stuck)."""
        with self._lock:
            return self._queued

    def queued_more(self, n: int) -> None:
        with self._lock:
            self._queued += n

    def begin(self, what: str, job: bool = False) -> int:
        token = next(self._ids)
        tid = threading.get_native_id()
        call = Call(what, time.monotonic(), threading.current_thread().name, tid, job)
        with self._lock:
            self._calls[token] = call
            if job:
                self._progress[token] = (cpu_time(tid), call.started)
                if not self._sampling:
                    self._sampling = True
                    threading.Thread(target=self._sample, name=f"{self._pool.name}-progress", daemon=True).start()
        return token

    def end(self, token: int) -> None:
        with self._lock:
            self._calls.pop(token, None)
            self._progress.pop(token, None)
            self._reported.discard(token)

    def _sample(self) -> None:
        """While jobs run: note when each one's thread last got CPU time (a thread of its own)."""
        while True:
            time.sleep(min(max(self.stuck_after / 4, 0.05), 1.0))
            with self._lock:
                jobs = [(token, self._calls[token].tid, seen) for token, seen in self._progress.items()]
                if not jobs:
                    self._sampling = False
                    return
            now = time.monotonic()
            for token, tid, (was, _since) in jobs:
                cpu = cpu_time(tid)
                if cpu is not None and cpu != was:
                    with self._lock:
                        if token in self._progress:
                            self._progress[token] = (cpu, now)

    def close(self) -> None:
        """Stop taking calls; threads finish what they have and exit (a stuck one is left behind)."""
        self._pool.close()
        self._background.close()
        self._jobs.close()
