"""The ``cachemgr`` command line (thin: parsing and printing; the work is in the library)."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from cachemgr import __version__
from cachemgr.cli import bundle as cli_bundle
from cachemgr.cli import daemon as cli_daemon
from cachemgr.cli import lifecycle as cli_lifecycle
from cachemgr.cli.output import emit_json, table
from cachemgr.cli.util import Ctx, json_option, pass_ctx, run_reporting
from cachemgr.errors import NotCachedError, exit_code_for
from cachemgr.fetch.pull import Puller, add_local, open_store
from cachemgr.progress import Bars
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.store.usage import record_handle_use
from cachemgr.units import format_size


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cachemgr")
@click.option("--home", type=click.Path(path_type=Path), help="Store directory [CACHEMGR_HOME].")
@click.option("--config", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--offline", is_flag=True, default=None, help="No network at all [CACHEMGR_OFFLINE].")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, config: Path | None, offline: bool | None) -> None:
    """Offline cache manager and mirror for TensorFlow Hub models."""
    ctx.obj = Ctx(config, {"home": home, "offline": offline})


def _ref_json(ref: Ref, store: Store) -> dict[str, Any]:
    doc = ref.to_json()
    doc["path"] = str(store.snapshot_path(ref.manifest))
    return doc


@cli.command()
@click.argument("handles", nargs=-1, required=True)
@click.option("--refresh", is_flag=True, help="Fetch again even if the model is present.")
@json_option
@pass_ctx
def pull(c: Ctx, handles: tuple[str, ...], refresh: bool, as_json: bool) -> None:
    """Fetch models into the store (several at once)."""

    def go() -> None:
        settings = c.settings
        store = open_store(settings)
        bars = Bars(sys.stderr.isatty() and not as_json)
        puller = Puller(settings, store, bars)
        try:
            results = asyncio.run(puller.pull_many(list(handles), refresh))
        finally:
            puller.close()
        failures = [r for r in results if r.error is not None]
        if as_json:
            emit_json({"results": [r.to_json() for r in results]})
        else:
            for r in results:
                if r.error is not None:
                    click.echo(f"cachemgr: error: {r.error}", err=True)
                elif r.ref is not None:
                    click.echo(f"{r.status:8} {r.asked}  sha256:{r.ref.manifest[:12]}  "
                               f"{format_size(r.ref.size)}  {r.ref.files} files")
        if failures:
            assert failures[0].error is not None
            sys.exit(exit_code_for(failures[0].error))

    run_reporting(as_json, go)


@cli.command()
@click.argument("handle")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
@pass_ctx
def add(c: Ctx, handle: str, path: Path, as_json: bool) -> None:
    """Ingest a local .tar/.tar.gz/.tar.zst or SavedModel directory under HANDLE."""

    def go() -> None:
        store = open_store(c.settings)
        result = add_local(c.settings, store, handle, path)
        if as_json:
            emit_json(result.to_json())
        elif result.ref is not None:
            click.echo(f"added    {handle}  sha256:{result.ref.manifest[:12]}  "
                       f"{format_size(result.ref.size)}  {result.ref.files} files")

    run_reporting(as_json, go)


@cli.command()
@click.option("--shell", type=click.Choice(["sh", "fish"]), default="sh")
@pass_ctx
def env(c: Ctx, shell: str) -> None:
    """Print shell lines that point tensorflow_hub at the store: eval "$(cachemgr env)"."""

    def go() -> None:
        store = open_store(c.settings, clean=False)
        view = str(store.view)
        if shell == "fish":
            click.echo(f"set -gx TFHUB_CACHE_DIR {shlex.quote(view)};")
        else:
            click.echo(f"export TFHUB_CACHE_DIR={shlex.quote(view)}")
        click.echo("export TF_USE_LEGACY_KERAS=1" if shell == "sh" else
                   "set -gx TF_USE_LEGACY_KERAS 1;")

    run_reporting(False, go)


def _existing_store(c: Ctx) -> Store:
    store = Store(c.settings.home)
    if store.exists():
        store.check_format()
    return store


@cli.command(name="ls")
@json_option
@pass_ctx
def ls_cmd(c: Ctx, as_json: bool) -> None:
    """List stored models: handle, digest, size, aliases."""

    def go() -> None:
        store = _existing_store(c)
        refs = RefIndex(store).all() if store.exists() else []
        if as_json:
            emit_json({"models": [_ref_json(r, store) for r in refs]})
            return
        rows = [[r.handle, r.manifest[:12], format_size(r.size), str(len(r.aliases))]
                for r in refs]
        click.echo(table(rows, ["HANDLE", "DIGEST", "SIZE", "ALIASES"]))

    run_reporting(as_json, go)


@cli.command()
@click.argument("handle")
@json_option
@pass_ctx
def info(c: Ctx, handle: str, as_json: bool) -> None:
    """Show one model's ref, provenance and aliases."""

    def go() -> None:
        store = _existing_store(c)
        ref = RefIndex(store).require(handle)
        doc = _ref_json(ref, store)
        if as_json:
            emit_json(doc)
            return
        doc["fetched_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ref.fetched_at))
        for key in ("handle", "manifest", "path", "size", "files", "source", "asked", "url",
                    "fetched_at", "etag", "x_goog_hash", "archive_size"):
            click.echo(f"{key + ':':14}{doc[key]}")
        click.echo("aliases:")
        for alias in ref.aliases:
            click.echo(f"  {alias}")

    run_reporting(as_json, go)


@cli.command()
@click.argument("handle")
@json_option
@pass_ctx
def path(c: Ctx, handle: str, as_json: bool) -> None:
    """Print the snapshot directory of HANDLE (exit 5 if it is not stored)."""

    def go() -> None:
        store = _existing_store(c)
        ref = RefIndex(store).require(handle)
        snap = store.snapshot_path(ref.manifest)
        if not snap.is_dir():
            raise NotCachedError(f"{handle} is recorded but out of service (quarantined or pruned); run "
                                 f"`cachemgr verify --repair` or `cachemgr pull --refresh {handle}`")
        record_handle_use(store.home, ref.handle)
        if as_json:
            emit_json({"handle": ref.handle, "path": str(snap), "manifest": ref.manifest})
        else:
            click.echo(str(snap))

    run_reporting(as_json, go)


# Modules that contribute more commands; each exposes COMMANDS (a list of click commands).
COMMAND_MODULES: tuple[Any, ...] = (cli_daemon, cli_bundle, cli_lifecycle)


def main() -> None:
    cli(prog_name="cachemgr")


# Command groups that live in their own modules (one job each).
for _module in COMMAND_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)
