"""Running the daemon: sockets (Unix, TCP, or socket activation), signals, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from cachemgr.errors import CachemgrError, ConfigError
from cachemgr.settings import Settings

from . import systemd
from .app import create_app
from .state import DaemonState
from .watch import Watcher

log = logging.getLogger("cachemgrd")
STOP_TIMEOUT = 8.0
LISTEN_BACKLOG = 4096  # herds of hundreds of processes connect at once (the kernel caps it at somaxconn)


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


async def _bind(runner: web.AppRunner, settings: Settings, env: Mapping[str, str]) -> list[str]:
    where: list[str] = []
    inherited = systemd.listen_sockets(env)
    for sock in inherited:
        await web.SockSite(runner, sock).start()
        where.append(f"fd:{sock.fileno()}")
    if inherited:
        return where
    path = settings.socket
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _socket_in_use(path):
            raise ConfigError(f"socket {path} is in use by another daemon; stop it or set --socket")
        path.unlink()
    await web.UnixSite(runner, str(path), backlog=LISTEN_BACKLOG).start()
    os.chmod(path, 0o660)
    where.append(f"unix:{path}")
    for addr in settings.listen:
        host, _, port = addr.rpartition(":")
        await web.TCPSite(runner, host.strip("[]"), int(port), backlog=LISTEN_BACKLOG).start()
        where.append(f"tcp:{addr}")
    return where


async def serve(settings: Settings, env: Mapping[str, str], config_arg: Any, overrides: Mapping[str, Any],
                ready_file: Path | None = None) -> None:
    state = DaemonState(settings, env, config_arg)
    app = create_app(state)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        where = await _bind(runner, settings, env)
    except BaseException:
        await runner.cleanup()
        raise
    watcher = Watcher(state)
    watcher.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = state.reload(overrides)
            watcher.state.settings = new
            systemd.notify("STATUS=configuration reloaded", env)
        except CachemgrError as err:
            log.error("reload refused, keeping the running configuration: %s", err)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    interval = systemd.watchdog_interval(env)
    if interval:
        async def ping() -> None:
            while True:
                systemd.notify("WATCHDOG=1", env)
                await asyncio.sleep(interval)
        state.spawn(ping())
    log.info("cachemgr daemon ready on %s, store %s", ", ".join(where), state.store.home)
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
    await runner.cleanup()
    if settings.socket is not None and not any(w.startswith("fd:") for w in where):
        with contextlib.suppress(FileNotFoundError):
            settings.socket.unlink()
    log.info("stopped")


def run(settings: Settings, env: Mapping[str, str], config_arg: Any, overrides: Mapping[str, Any],
        ready_file: Path | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="cachemgrd: %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(settings, env, config_arg, overrides, ready_file))
