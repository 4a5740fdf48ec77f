"""The ``cachemgr`` command line (thin: parsing and printing; the work is in the library)."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import CachemgrError, exit_code_for
from .output import emit_json, fail, table
from .progress import Bars
from .pull import Puller, add_local, open_store
from .refs import Ref, RefIndex
from .settings import Settings, load_settings
from .store import Store
from .units import format_size


@dataclass
class Ctx:
    config: Path | None
    overrides: dict[str, Any]
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(os.environ, self.config, self.overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Ctx)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _run(as_json: bool, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except CachemgrError as err:
        fail(err, as_json)


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

    _run(as_json, go)


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

    _run(as_json, go)


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

    _run(False, go)


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

    _run(as_json, go)


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

    _run(as_json, go)


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
        if as_json:
            emit_json({"handle": ref.handle, "path": str(snap), "manifest": ref.manifest})
        else:
            click.echo(str(snap))

    _run(as_json, go)


def main() -> None:
    cli(prog_name="cachemgr")
