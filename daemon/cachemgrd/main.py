"""Running the daemon: sockets (Unix, TCP, or socket activation), signals, sd_notify.

Stopping (SIGTERM, SIGINT) never waits for a store call stuck on a hung mount: the in-flight
fetches get ``INFLIGHT_STOP`` seconds to end once cancelled, and a thread armed at the signal
ends the process after ``STOP_DEADLINE`` seconds whatever is still running, or ``EXIT_GRACE``
seconds after the daemon stopped (a store thread in the kernel cannot be joined, and the
interpreter's exit joins executor threads forever). The
exit status is 0 either way: the daemon stopped as asked, and the store stays consistent (every
write is a temp and a rename; the temps left are collected by the next run). systemd's
``TimeoutStopSec=10`` (then SIGKILL) is the backstop above ``STOP_DEADLINE``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from cachemgr.errors import CachemgrError
from cachemgr.settings import Settings, usable_cpus
from cachemgrd import logs, systemd
from cachemgrd.app import INTERNAL_SOCKET, WORKERS, create_app
from cachemgrd.frontdoor import FrontDoor, is_tcp
from cachemgrd.gc_freeze import freeze_startup_objects
from cachemgrd.listeners import LISTEN_BACKLOG, Listeners, bind_all
from cachemgrd.state import DaemonState
from cachemgrd.supervisor import WorkerPool
from cachemgrd.watch import Watcher

log = logging.getLogger("cachemgrd")
SHUTDOWN_TIMEOUT = 2.0  # seconds requests in progress get to finish at stop
INFLIGHT_STOP = 3.0  # seconds cancelled fetches get to clean up (their last store call may hang)
STOP_DEADLINE = 8.0  # seconds from the stop signal to the exit, stuck store threads or not
EXIT_GRACE = 2.0  # seconds from "stopped" to the exit (the interpreter joins executor threads)


def arm_stop_deadline(state: DaemonState | None, deadline: float = STOP_DEADLINE,
                      where: str = "after the stop signal") -> threading.Timer:
    """A daemon thread that ends the process ``deadline`` seconds from now, naming what is stuck."""
    def give_up() -> None:
        stuck = [c["what"] for c in state.io.stuck()] if state is not None else []
        log.warning("still running %.0f s %s; exiting without the store calls still running (%s): "
                    "is the store's filesystem answering?", deadline, where, "; ".join(stuck) or "none stuck",
                    extra={"event": "stop_abandoned", "stuck_io": stuck})
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(deadline, give_up)
    timer.daemon = True
    timer.start()
    return timer


async def _open_state(settings: Settings, env: Mapping[str, str], config_arg: Any,
                      stop: asyncio.Event) -> DaemonState | None:
    """The state (store opened, dead runs undone, in a store job), or None if told to stop first."""
    opening = asyncio.ensure_future(DaemonState.start_up(settings, env, config_arg))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if opening.done():
        return opening.result()
    opening.cancel()
    arm_stop_deadline(None)
    log.warning("stopped during start-up, before the store answered", extra={"event": "stopped_at_start"})
    return None


async def _serve_sockets(runner: web.AppRunner, listeners: Listeners, pool: WorkerPool | None,
                         door: FrontDoor) -> None:
    for sock in listeners.sockets:
        if is_tcp(sock):  # client_timeout and max_peer_connections (frontdoor.py)
            await door.serve(runner, sock, LISTEN_BACKLOG)
        else:
            await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()
    if pool is not None:
        await web.UnixSite(runner, pool.primary_socket, backlog=LISTEN_BACKLOG).start()
        os.chmod(pool.primary_socket, 0o600)


async def serve(settings: Settings, env: Mapping[str, str], config_arg: Any, overrides: Mapping[str, Any],
                ready_file: Path | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # first: a SIGTERM during start-up stops us cleanly
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("SIGHUP during start-up ignored; send it again"))
    state = await _open_state(settings, env, config_arg, stop)
    if state is None:
        return
    app = create_app(state)
    count = settings.worker_count(usable_cpus())
    listeners = bind_all(settings, env)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, **logs.runner_options())
    pool: WorkerPool | None = None
    door = FrontDoor(settings)
    try:
        if count > 1:
            pool = WorkerPool(listeners, env)
            app[WORKERS] = pool
            app[INTERNAL_SOCKET] = pool.primary_socket
        await runner.setup()
        await _serve_sockets(runner, listeners, pool, door)
        if pool is not None:
            await pool.start(settings, count)
    except BaseException:
        if pool is not None:
            await pool.stop()
        await runner.cleanup()
        if pool is not None:
            pool.close()
        listeners.close()
        raise
    where = listeners.where
    watcher = Watcher(state)
    watcher.start()
    freeze_startup_objects()

    async def reload() -> None:
        try:
            new = await state.reload(overrides)
        except CachemgrError as err:
            log.error("reload refused, keeping the running configuration: %s", err)
            return
        watcher.state.settings = new
        logs.configure(new)
        door.limit.cap = new.max_peer_connections
        if pool is not None:
            state.spawn(pool.reload(new, new.worker_count(usable_cpus())))
        elif new.worker_count(usable_cpus()) > 1:
            log.warning("reload: this daemon started with one process; restart it to add workers")
        systemd.notify("STATUS=configuration reloaded", env)

    loop.add_signal_handler(signal.SIGHUP, lambda: state.spawn(reload()))
    interval = systemd.watchdog_interval(env)
    if interval:
        async def ping() -> None:
            while True:
                systemd.notify("WATCHDOG=1", env)
                await asyncio.sleep(interval)
        state.spawn(ping())
    procs = f", primary and workers {pool.pids()}" if pool is not None else ""
    log.info("cachemgr daemon ready on %s, store %s%s", ", ".join(where), state.store.home, procs)
    systemd.notify(f"READY=1\nSTATUS=serving on {', '.join(where)}", env)
    if ready_file is not None:
        ready_file.write_text("\n".join(where) + "\n")
    await stop.wait()
    arm_stop_deadline(state)
    log.info("stopping: cancelling %d in-flight fetches", len(state.inflight))
    systemd.notify("STOPPING=1", env)
    watcher.stop()
    fetches = list(state.inflight.values())
    for task in fetches:
        task.cancel()
    if fetches:  # each removes its in-flight mark; on a hung mount that call hangs: not waited for
        await asyncio.wait(fetches, timeout=INFLIGHT_STOP)
    if pool is not None:
        await pool.stop()  # workers finish their requests (forwarded ones too) while we still serve
    await door.shutdown(SHUTDOWN_TIMEOUT)
    await runner.cleanup()
    if pool is not None:
        pool.close()
    listeners.close()
    log.info("stopped")
    arm_stop_deadline(state, EXIT_GRACE, "after stopping")  # a stuck thread is never joined at exit


def run(settings: Settings, env: Mapping[str, str], config_arg: Any, overrides: Mapping[str, Any],
        ready_file: Path | None = None) -> None:
    logs.configure(settings)
    asyncio.run(serve(settings, env, config_arg, overrides, ready_file))
