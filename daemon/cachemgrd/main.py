"""Running the daemon: sockets (Unix, TCP, or socket activation), signals, sd_notify."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
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
    state = DaemonState(settings, env, config_arg)
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
    log.info("stopping: cancelling %d in-flight fetches", len(state.inflight))
    systemd.notify("STOPPING=1", env)
    watcher.stop()
    for task in list(state.inflight.values()):
        task.cancel()
    await asyncio.gather(*state.inflight.values(), return_exceptions=True)
    if pool is not None:
        await pool.stop()  # workers finish their requests (forwarded ones too) while we still serve
    await door.shutdown(SHUTDOWN_TIMEOUT)
    await runner.cleanup()
    if pool is not None:
        pool.close()
    listeners.close()
    log.info("stopped")


def run(settings: Settings, env: Mapping[str, str], config_arg: Any, overrides: Mapping[str, Any],
        ready_file: Path | None = None) -> None:
    logs.configure(settings)
    asyncio.run(serve(settings, env, config_arg, overrides, ready_file))
