"""The store's own commands: pull, add, env, ls, info, path."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from cachemgr.cli.complete import complete_handles
from cachemgr.cli.output import emit_json, table
from cachemgr.cli.util import Ctx, command, from_file_option, handles_from, json_option, pass_ctx, with_store
from cachemgr.errors import NotCachedError, exit_code_for
from cachemgr.fetch.pull import add_local, pull_handles
from cachemgr.lifecycle.model_state import ModelState, states_of
from cachemgr.progress import Bars
from cachemgr.settings import default_home
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.store.usage import record_handle_use
from cachemgr.units import format_size


def _ref_json(ref: Ref, store: Store, state: ModelState) -> dict[str, Any]:
    """A ref as ``ls``/``info`` print it: with its state, and a path only if the snapshot is there."""
    doc = ref.to_json()
    snap = store.snapshot_path(ref.manifest)
    doc["path"] = str(snap) if state.code not in ("out_of_service", "missing_manifest", "corrupt_manifest") else None
    doc["state"] = state.code
    doc["fix"] = state.fix
    return doc


@command()
@click.argument("handles", nargs=-1, shell_complete=complete_handles)
@from_file_option
@click.option("--refresh", is_flag=True, help="Fetch again even if the model is present.")
@json_option
@pass_ctx
@with_store(create=True, clean=True)
def pull(c: Ctx, store: Store, handles: tuple[str, ...], from_file: Path | None, refresh: bool,
         as_json: bool) -> None:
    """Fetch models into the store (several at once)."""
    wanted = handles_from(handles, from_file)
    results = pull_handles(c.settings, store, wanted, refresh, Bars(sys.stderr.isatty() and not as_json))
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


@command()
@click.argument("handle")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
@pass_ctx
@with_store(create=True, clean=True)
def add(c: Ctx, store: Store, handle: str, path: Path, as_json: bool) -> None:
    """Ingest a local .tar/.tar.gz/.tar.zst or SavedModel directory under HANDLE."""
    result = add_local(c.settings, store, handle, path)
    if as_json:
        emit_json(result.to_json())
    elif result.ref is not None:
        click.echo(f"added    {handle}  sha256:{result.ref.manifest[:12]}  "
                   f"{format_size(result.ref.size)}  {result.ref.files} files")


@command()
@click.option("--shell", type=click.Choice(["sh", "fish"]), default="sh")
@pass_ctx
@with_store(missing_ok=True)
def env(c: Ctx, store: Store, shell: str) -> None:
    """Print shell lines that point tensorflow_hub at the store: eval "$(cachemgr env)".

    The default home is made on first use; any other --home / CACHEMGR_HOME must be a store.
    """
    if not store.exists():
        if c.settings.home != default_home(os.environ):
            store.check_format()  # NoStoreError: a typo'd --home is not silently made
        store.create()
    view = str(store.view)
    if shell == "fish":
        click.echo(f"set -gx TFHUB_CACHE_DIR {shlex.quote(view)};")
    else:
        click.echo(f"export TFHUB_CACHE_DIR={shlex.quote(view)}")
    click.echo("export TF_USE_LEGACY_KERAS=1" if shell == "sh" else
               "set -gx TF_USE_LEGACY_KERAS 1;")


@command(name="ls")
@json_option
@pass_ctx
@with_store()
def ls_cmd(c: Ctx, store: Store, as_json: bool) -> None:
    """List stored models: handle, digest, size, aliases, state (and its fix)."""
    refs = RefIndex(store).all()
    states = states_of(store, refs)
    if as_json:
        emit_json({"models": [_ref_json(r, store, states[r.handle]) for r in refs]})
        return
    rows = [[r.handle, r.manifest[:12], format_size(r.size), str(len(r.aliases)), states[r.handle].code]
            for r in refs]
    click.echo(table(rows, ["HANDLE", "DIGEST", "SIZE", "ALIASES", "STATE"]))
    for r in refs:
        if not states[r.handle].ok:
            click.echo(f"{r.handle}: {states[r.handle].fix}")


@command()
@click.argument("handle", shell_complete=complete_handles)
@json_option
@pass_ctx
@with_store()
def info(c: Ctx, store: Store, handle: str, as_json: bool) -> None:
    """Show one model's ref, provenance and aliases."""
    ref = RefIndex(store).require(handle)
    state = states_of(store, [ref])[ref.handle]
    doc = _ref_json(ref, store, state)
    if as_json:
        emit_json(doc)
        return
    doc["path"] = doc["path"] or "- (no snapshot)"
    doc["fetched_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ref.fetched_at))
    doc["size"] = format_size(ref.size)
    doc["archive_size"] = format_size(ref.archive_size) if ref.archive_size is not None else None
    for key in ("handle", "state", "manifest", "path", "size", "files", "source", "asked", "url",
                "fetched_at", "etag", "x_goog_hash", "archive_size"):
        click.echo(f"{key + ':':14}{doc[key]}")
    if not state.ok:
        click.echo(f"{'fix:':14}{state.fix}")
    click.echo("aliases:")
    for alias in ref.aliases:
        click.echo(f"  {alias}")


@command()
@click.argument("handle", shell_complete=complete_handles)
@json_option
@pass_ctx
@with_store()
def path(c: Ctx, store: Store, handle: str, as_json: bool) -> None:
    """Print the snapshot directory of HANDLE (exit 5 if it is not stored)."""
    ref = RefIndex(store).require(handle)
    snap = store.snapshot_path(ref.manifest)
    if not snap.is_dir():
        raise NotCachedError(f"{handle} is recorded but out of service (quarantined or pruned); run "
                             f"`cachemgr verify --repair` or `cachemgr pull --refresh {handle}`")
    record_handle_use(store.home, ref.handle, None, c.settings.node_id)
    if as_json:
        emit_json({"handle": ref.handle, "path": str(snap), "manifest": ref.manifest})
    else:
        click.echo(str(snap))


COMMANDS = [pull, add, env, ls_cmd, info, path]
