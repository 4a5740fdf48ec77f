"""``push``: stored models to an OCI registry as ModelPack artifacts (work is in cachemgr.oci)."""

from __future__ import annotations

import click

from cachemgr.cli.complete import complete_handles
from cachemgr.cli.output import emit_json
from cachemgr.cli.util import Ctx, command, json_option, pass_ctx, with_store
from cachemgr.oci.push import push_handles
from cachemgr.store.objects import Store
from cachemgr.units import format_size


@command()
@click.argument("handles", nargs=-1, required=True, shell_complete=complete_handles)
@click.option("--to", "target", required=True, metavar="oci://HOST[:PORT]/PREFIX",
              help="Registry and repository prefix; each model goes to PREFIX/<mapped handle>:<version>.")
@json_option
@pass_ctx
@with_store()
def push(c: Ctx, store: Store, handles: tuple[str, ...], target: str, as_json: bool) -> None:
    """Push stored models to an OCI registry as ModelPack artifacts (only missing blobs travel)."""
    results = push_handles(c.settings, store, target, list(dict.fromkeys(handles)))
    if as_json:
        emit_json({"results": [r.to_json() for r in results]})
        return
    for r in results:
        n = r.counts
        click.echo(f"pushed   {r.handle} -> {r.reference}  sha256:{r.digest[:12]}  {r.blobs} blobs: "
                   f"{n.uploaded} uploaded ({format_size(n.uploaded_bytes)}), {n.present} already there, "
                   f"{n.mounted} mounted")


COMMANDS = [push]
