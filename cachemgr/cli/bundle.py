"""``export``, ``import``, ``inventory`` and ``keygen``: air-gapped bundles (work is in cachemgr.bundle)."""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path

import click

from cachemgr import signing
from cachemgr.bundle.container import read_part_header
from cachemgr.bundle.export import build_manifest, live_pins, select_refs, write_bundle
from cachemgr.bundle.format import Inventory
from cachemgr.bundle.importer import ImportResult, import_bundle, take_inventory
from cachemgr.cli.complete import complete_handles
from cachemgr.cli.output import emit_json
from cachemgr.cli.util import SIZE, Ctx, command, from_file_option, handles_from, json_option, pass_ctx, with_store
from cachemgr.errors import MissingBaseError, UsageError, exit_code_for
from cachemgr.oci.layout import LayoutImport, export_layout, import_layout, is_layout
from cachemgr.progress import Bars
from cachemgr.store.fs import atomic_write
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store, open_store
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.units import format_size, plural


@command()
@click.argument("handles", nargs=-1, shell_complete=complete_handles)
@from_file_option
@click.option("--all", "everything", is_flag=True, help="Export every model in the store.")
@click.option("--pinned", is_flag=True, help="Export every pinned model (live pins).")
@click.option("--with-pins", is_flag=True, help="Carry the pins themselves, so the other side keeps them pinned.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Bundle file (.tar.zst).")
@click.option("--have", type=click.Path(path_type=Path),
              help="Inventory of the receiving side (cachemgr inventory): pack only the blobs it lacks.")
@click.option("--split-size", type=SIZE, help="Write FILE.part001, .part002, ... of at most SIZE each (e.g. 4000M).")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), help="Sign with this ed25519 key (keygen).")
@click.option("--format", "fmt", type=click.Choice(["bundle", "oci-layout"]), default="bundle", show_default=True,
              help="bundle: one .tar.zst; oci-layout: an OCI image layout directory -o DIR (ModelPack artifacts).")
@json_option
@pass_ctx
@with_store(clean=True)
def export(c: Ctx, store: Store, handles: tuple[str, ...], from_file: Path | None, everything: bool, pinned: bool,
           with_pins: bool, output: Path, have: Path | None, split_size: int | None, sign_key: Path | None,
           fmt: str, as_json: bool) -> None:
    """Write models (their refs, manifests and blobs, each once) to one .tar.zst bundle or an OCI layout."""
    if from_file is not None:
        handles = tuple(handles_from(handles, from_file))
    if fmt == "oci-layout":
        extras = [n for n, v in (("--have", have), ("--split-size", split_size), ("--sign", sign_key),
                                 ("--with-pins", with_pins)) if v]
        if extras:
            raise UsageError(f"{extras[0]} is for bundles; an OCI layout (--format oci-layout) takes handles, "
                             "--all or --pinned and -o DIR only")
        _export_layout(store, select_refs(store, handles, everything, live_pins(store) if pinned else ()),
                       output, as_json)
        return
    inv = None
    if have is not None:
        try:
            inv = Inventory.from_bytes(have.read_bytes(), str(have))
        except OSError as exc:
            raise UsageError(f"cannot read inventory {have} ({exc.strerror}); fix the path") from None
    pins = live_pins(store)
    refs = select_refs(store, handles, everything, pins if pinned else ())
    exported = {r.handle for r in refs}
    carried = [p for p in pins if RefIndex(store).canonical_for(p.asked) in exported] if with_pins else None
    bundle = build_manifest(store, refs, inv, pins=carried)
    bar = Bars(sys.stderr.isatty() and not as_json).new(f"export {output.name}")
    try:
        result = write_bundle(store, bundle, output, split_size=split_size, sign_key=sign_key, bar=bar)
    finally:
        bar.close()
    outputs = [str(p) for p in result.outputs]
    doc = {
        "outputs": outputs, "size": result.size,
        "models": [r.handle for r in bundle.refs], "blobs": len(bundle.blobs),
        "packed_blobs": len(bundle.packed), "packed_bytes": bundle.packed_bytes,
        "pins": len(bundle.pins or []),
        "signer": signing.fingerprint(result.signer) if result.signer else None,
    }
    if as_json:
        emit_json(doc)
        return
    omitted = len(bundle.blobs) - len(bundle.packed)
    click.echo(f"wrote {', '.join(outputs)} ({format_size(result.size)}): {len(bundle.refs)} models, "
               f"{len(bundle.packed)} blobs ({format_size(bundle.packed_bytes)})"
               + (f", {omitted} blobs the receiver has left out" if inv is not None else ""))
    click.echo(f"signed by {doc['signer']}" if result.signer else "unsigned (use --sign KEY to sign)")


def _export_layout(store: Store, refs: list[Ref], output: Path, as_json: bool) -> None:
    done = export_layout(store, refs, output)
    if as_json:
        emit_json({"layout": str(done.path), "models": done.models, "names": done.names, "blobs": done.blobs,
                   "size": done.size})
        return
    click.echo(f"wrote OCI layout {done.path}: {len(done.models)} models, {done.blobs} blobs "
               f"({format_size(done.size)})")
    for name in done.names:
        click.echo(f"  oci:{done.path}:{name}")


def _import_layout(c: Ctx, store: Store, path: Path, dry_run: bool, as_json: bool) -> None:
    result = import_layout(store, path, Limits.of(c.settings), dry_run=dry_run)
    if as_json:
        emit_json({"results": [result.to_json()]})
        return
    _summarize(result, dry_run)


def _expand(files: tuple[str, ...]) -> list[list[Path]]:
    """Bundles to import, in order: each whole file alone, all parts together."""
    paths: list[Path] = []
    for text in files:
        matches = sorted(glob.glob(text)) if not Path(text).exists() and glob.has_magic(text) else [text]
        if not matches:
            raise UsageError(f"no file matches {text}; give the bundle file or its parts")
        if not glob.has_magic(text) and not Path(text).exists():
            raise UsageError(f"{text} does not exist; give the bundle file (.tar.zst) or its parts")
        paths += [Path(m) for m in matches]
    parts = [p for p in paths if p.is_file() and read_part_header(p) is not None]
    wholes = [[p] for p in paths if p not in parts]
    return wholes + ([parts] if parts else [])


def _summarize(result: ImportResult | LayoutImport, dry_run: bool) -> None:
    """What an import (or an import --dry-run) of a bundle or an OCI layout did, or would do: the
    counts, then a line a model; for a bundle its pins, missing blobs and signature too."""
    added, updated, unchanged = len(result.added), len(result.updated), len(result.unchanged)
    lines: list[tuple[str, list[str]]] = [("added", result.added), ("updated", result.updated)]
    if isinstance(result, LayoutImport):
        click.echo(f"{'would import' if dry_run else 'imported'} {result.where}: {added} added, {updated} updated, "
                   f"{unchanged} unchanged; {result.blobs_added} new blobs ({format_size(result.bytes_added)}), "
                   f"{result.blobs_verified} verified")
    elif dry_run:
        click.echo(f"dry run: {result.where} would add {plural(added, 'model')}, update {updated}, leave "
                   f"{unchanged} unchanged; {plural(result.blobs_added, 'new blob')} "
                   f"({format_size(result.bytes_added)}), {result.blobs_skipped} already here (skipped); "
                   f"{len(result.missing)} missing")
        missing = [f"blob {digest} (neither the bundle nor this store has it)" for digest in result.missing]
        lines = [("add", result.added), ("update", result.updated), ("skip", result.unchanged),
                 ("pin", result.pins_added), ("missing", missing)]
    elif result.noop:
        click.echo(f"nothing to import: all {unchanged} models in {result.where} are already here "
                   f"(verified {result.blobs_skipped} blobs)")
        lines = [("pinned", result.pins_added)]
    else:
        click.echo(f"imported {result.where}: {added} added, {updated} updated, {unchanged} unchanged; "
                   f"{result.blobs_added} new blobs ({format_size(result.bytes_added)}), "
                   f"{result.blobs_skipped} already present")
        lines.append(("pinned", result.pins_added))
    for status, names in lines:
        for name in names:
            click.echo(f"  {status:9}{name}")
    if isinstance(result, ImportResult):
        trust = "trusted key" if result.trusted else "key not checked against a trusted list"
        click.echo(f"signature: good, by {signing.fingerprint(result.signer)} ({trust})" if result.signer
                   else "signature: none")


@command(name="import")
@click.argument("files", nargs=-1, required=True)
@click.option("--require-signature", "pubkeys", multiple=True, metavar="PUBKEY",
              help="Refuse bundles not signed by this key (.pub file or 'ssh-ed25519 ...'); repeatable.")
@click.option("--dry-run", is_flag=True,
              help="Verify the bundle and say what would be added, skipped and missing; change nothing.")
@json_option
@pass_ctx
@with_store(missing_ok=True)
def import_(c: Ctx, store: Store, files: tuple[str, ...], pubkeys: tuple[str, ...], dry_run: bool,
            as_json: bool) -> None:
    """Verify and add a bundle (a .tar.zst, or its parts) to the store; needs no network."""
    if not dry_run:
        open_store(c.settings, create=False, missing_ok=True, clean=True)  # stale temps of dead runs go

    if len(files) == 1 and is_layout(Path(files[0])):  # an OCI image layout directory (docs/oci.md)
        _import_layout(c, store, Path(files[0]), dry_run, as_json)
        return
    trusted = list(c.settings.trusted_keys)
    for item in pubkeys:
        trusted += signing.read_public_keys(item, "--require-signature")
    results = []
    for group in _expand(files):
        bar = Bars(sys.stderr.isatty() and not as_json).new(f"import {group[0].name}")
        try:
            results.append(import_bundle(store, group, tuple(dict.fromkeys(trusted)), bar, dry_run=dry_run,
                                         limits=Limits.of(c.settings)))
        finally:
            bar.close()
        if not as_json:
            _summarize(results[-1], dry_run)
    if as_json:
        emit_json({"results": [r.to_json() for r in results]})
    if dry_run:
        missing = [r for r in results if r.missing]
        if missing:  # the import itself would be refused: say so with its exit code
            err = MissingBaseError(f"{missing[0].where}: an import would be refused: a delta relying on "
                                   f"{plural(len(missing[0].missing), 'blob')} this store does not have; make a "
                                   "fresh `cachemgr inventory` here and export again with --have")
            click.echo(f"cachemgr: error: {err}", err=True)
            sys.exit(exit_code_for(err))
        if not as_json:
            click.echo("dry run: nothing was changed")


@command()
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the JSON.")
@pass_ctx
@with_store(clean=True)
def inventory(c: Ctx, store: Store, output: Path) -> None:
    """List the manifests and blobs held here, for `export --have` on the connected side."""

    inv = take_inventory(store, time.time())
    atomic_write(output, inv.to_bytes(), output.parent if str(output.parent) else Path("."))
    click.echo(f"wrote {output}: {len(inv.manifests)} manifests, {len(inv.blobs)} blobs")


@command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--comment", default="cachemgr", show_default=True, help="Comment in the .pub line.")
def keygen(path: Path, comment: str) -> None:
    """Make an ed25519 key pair: PATH (private, 0600) and PATH.pub (OpenSSH format)."""

    line = signing.generate_keypair(path, comment)
    click.echo(f"wrote {path} (private: keep it on the connected side) and {path}.pub")
    click.echo(f"fingerprint {signing.fingerprint(line)}")
    click.echo(f"trust it on the air-gapped side: cachemgr import --require-signature {path}.pub FILE, "
               f"or trusted_keys = [\"{path}.pub\"] in config.toml")


COMMANDS = [export, import_, inventory, keygen]
