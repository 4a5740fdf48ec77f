"""Commands around the daemon: ``daemon``, ``status``, ``shim install|uninstall``."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

import click

from cachemgr.cli.output import emit_json, fail
from cachemgr.cli.util import Ctx, Group, command, json_option, pass_ctx
from cachemgr.client.daemon_client import DaemonUnavailable, call
from cachemgr.errors import CachemgrError
from cachemgr.units import format_size

PTH_NAME = "cachemgr-shim.pth"


@command()
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Unix socket [CACHEMGR_SOCKET].")
@click.option("--listen", multiple=True, help="Also serve TCP on HOST:PORT (repeatable) [CACHEMGR_LISTEN].")
@click.option("--workers", help="Processes serving the sockets: N or 'auto' (one per two cores, at most 4) "
              "[CACHEMGR_WORKERS].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Least important log lines written (default info) [CACHEMGR_LOG_LEVEL].")
@click.option("--log-format", type=click.Choice(["text", "json"], case_sensitive=False),
              help="'text' lines (default), or 'json': one object per line with ts, level, logger, msg and "
              "the line's fields (handle, bytes, seconds, ...), for journald and log shippers "
              "[CACHEMGR_LOG_FORMAT].")
@click.option("--ready-file", type=click.Path(path_type=Path), hidden=True)
@pass_ctx
def daemon(c: Ctx, socket_path: Path | None, listen: tuple[str, ...], workers: str | None,
           log_level: str | None, log_format: str | None, ready_file: Path | None) -> None:
    """Run the cache daemon (resolve API, mirror, watcher).

    It logs one line per fetch, failed resolve, mirror serve, prune and scrub to stderr. TCP clients
    must send each request within CACHEMGR_CLIENT_TIMEOUT (30s) and may hold at most
    CACHEMGR_MAX_PEER_CONNECTIONS (64) connections per address; the next are answered 429.
    """
    if socket_path is not None:
        c.overrides["socket"] = socket_path
    if listen:
        c.overrides["listen"] = list(listen)
    if workers is not None:
        c.overrides["workers"] = workers
    if log_level is not None:
        c.overrides["log_level"] = log_level
    if log_format is not None:
        c.overrides["log_format"] = log_format
    from cachemgrd.main import run  # the CLI depends on the daemon package, never the reverse

    run(c.settings, dict(os.environ), c.config, dict(c.overrides), ready_file)


@command()
@json_option
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Show the running daemon's state."""

    sock = str(c.settings.socket)
    try:
        code, doc = call(sock, "GET", "/v1/status", timeout=10)
    except DaemonUnavailable as exc:
        raise CachemgrError(f"{exc.strerror}; start it with `cachemgr daemon` or set CACHEMGR_SOCKET") from None
    if as_json:
        emit_json(doc)
        return
    workers = doc.get("workers") or []
    procs = f" (+{len(workers)} workers: {', '.join(map(str, workers))})" if workers else ""
    node = f"node {doc['node']}, " if doc.get("node") else ""
    click.echo(f"daemon {doc['version']} {node}pid {doc['pid']}{procs} up {doc['uptime']:.0f}s, store {doc['home']}")
    click.echo(f"models {doc['store_entries']}, {format_size(doc['store_bytes'])}; hits {doc['hits']}, "
               f"misses {doc['misses']}, in flight {len(doc['inflight'])}, offline {doc['offline']}")
    for call_doc in doc.get("stuck_io") or []:  # store calls past stuck_io_after: the store's filesystem hangs
        if call_doc.get("job"):  # a background job: stuck is the time it has had no CPU
            click.echo(f"STUCK store job {call_doc.get('idle', 0):.0f}s without CPU (running "
                       f"{call_doc['seconds']:.0f}s): {call_doc['what']} (thread {call_doc['thread']})")
            continue
        click.echo(f"STUCK store call {call_doc['seconds']:.0f}s: {call_doc['what']} (thread {call_doc['thread']})")
    if doc.get("queued_io"):
        click.echo(f"{doc['queued_io']} store calls waiting for a thread")


def _pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


@click.group(cls=Group)
def shim() -> None:
    """Install or remove the tensorflow_hub shim for unchanged programs."""


@shim.command("install")
def shim_install() -> None:
    """Write a .pth file so every Python process of this environment uses the shim."""
    path = _pth_path()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text("import cachemgr.shim\n")
        os.replace(tmp, path)
    except OSError as exc:
        fail(CachemgrError(f"cannot write {path}: {exc.strerror}; run with the environment's owner"), False)
    click.echo(f"installed {path}")


@shim.command("uninstall")
def shim_uninstall() -> None:
    """Remove the .pth file."""
    path = _pth_path()
    try:
        path.unlink()
        click.echo(f"removed {path}")
    except FileNotFoundError:
        click.echo(f"not installed ({path} absent)")
        sys.exit(0)


COMMANDS: list[Any] = [daemon, status, shim]
