"""Lifecycle commands: pin, unpin, pins, prune, verify, du (thin: the work is in the library)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cachemgr.cli.complete import complete_handles
from cachemgr.cli.output import emit_json, table
from cachemgr.cli.util import DURATION, SIZE, Ctx, command, json_option, pass_ctx, with_store
from cachemgr.errors import ChecksFailedError, exit_code_for
from cachemgr.progress import Bars
from cachemgr.store.objects import Store
from cachemgr.units import format_age, format_size, plural


def _emit_plan(dry_run: bool, plan: Any, result: Any) -> None:
    """prune's and rm's --json: the plan, and what was done unless it was a dry run."""
    doc = {"dry_run": dry_run, "plan": plan.to_json()}
    if result is not None:
        doc["result"] = result.to_json()
    emit_json(doc)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


@command()
@click.argument("handle", shell_complete=complete_handles)
@click.option("--reason", help="Why it is pinned (shown by `cachemgr pins`); pinning again keeps the old one.")
@click.option("--until", "until_text",
              help="Expiry: a future date (2025-12-31) or a duration from now (30d); pinning again keeps the old one.")
@json_option
@pass_ctx
@with_store(create=True, clean=True)
def pin(c: Ctx, store: Store, handle: str, reason: str | None, until_text: str | None, as_json: bool) -> None:
    """Pin HANDLE so that prune never removes it (fetches it if it is not stored)."""
    from cachemgr.lifecycle import pins
    until = pins.parse_until(until_text, time.time()) if until_text else None
    out = pins.pin(c.settings, store, handle, reason=reason, until=until)
    if as_json:
        emit_json(out.to_json())
        return
    if out.action == "wanted":
        click.echo(f"wanted   {handle}  not stored and offline: recorded as wanted-but-missing; "
                   "it is fetched when online (`cachemgr pull` or the daemon)")
    else:
        digest = f"sha256:{(out.pin.digest or '')[:12]}"
        click.echo(f"{'fetched and pinned' if out.action == 'fetched' else 'pinned'}  {out.pin.handle}  {digest}"
                   + (f"  until {_when(out.pin.until)} UTC" if out.pin.until else ""))
    if out.previous is not None:
        said = [f"changed {', '.join(out.changes)}" if out.changes else "nothing changed"]
        if out.kept:
            said.append(f"kept {', '.join(out.kept)}")
        click.echo(f"  re-pinned: {'; '.join(said)}")


@command()
@click.argument("handle", shell_complete=complete_handles)
@json_option
@pass_ctx
@with_store()
def unpin(c: Ctx, store: Store, handle: str, as_json: bool) -> None:
    """Remove the pin on HANDLE (the model stays until a prune removes it)."""
    from cachemgr.lifecycle import pins

    gone = pins.unpin(store, handle)
    if as_json:
        emit_json({"unpinned": gone.to_json()})
    else:
        click.echo(f"unpinned {gone.handle}")


@command(name="pins")
@click.option("--check/--no-check", default=None,
              help="--check: also exit 13 if any pin is expired, missing or changed (in the store or upstream), "
              "for cron and monitoring. --no-check: do not ask upstream. [default: ask upstream when online, exit 0]")
@json_option
@pass_ctx
@with_store()
def pins_cmd(c: Ctx, store: Store, check: bool | None, as_json: bool) -> None:
    """List pins: who, when, why, until, and whether each still holds (or changed upstream)."""
    from cachemgr.lifecycle import pins

    statuses = pins.pin_statuses(store)
    if check is not False and not c.settings.offline:
        statuses = pins.with_upstream(c.settings, statuses)
    failing = pins.failing(statuses) if check else []
    if as_json:
        doc: dict[str, object] = {"pins": [s.to_json() for s in statuses]}
        if check:
            doc["failing"] = [s.pin.handle for s in failing]
        emit_json(doc)
    else:
        rows = [[s.pin.handle, s.state + ("/upstream-changed" if s.upstream == "changed" else ""),
                 (s.pin.digest or "-")[:12], s.pin.who, _when(s.pin.when), _when(s.pin.until), s.pin.reason,
                 s.detail] for s in statuses]
        click.echo(table(rows, ["HANDLE", "STATE", "DIGEST", "WHO", "WHEN", "UNTIL", "REASON", "NOTE"]))
    if failing:
        err = ChecksFailedError(
            f"pins --check: {plural(len(failing), 'pin')} of {len(statuses)} not holding: "
            + ", ".join(f"{s.pin.handle} ({'upstream changed' if s.state == 'ok' else s.state})" for s in failing)
            + "; pull or re-pin them, or unpin what is no longer needed")
        if as_json:
            click.echo(f"cachemgr: error: {err}", err=True)
            sys.exit(exit_code_for(err))
        raise err


@command()
@click.option("--max-size", type=SIZE, help="Evict least-recently-used models until the store is under SIZE.")
@click.option("--unused-for", type=DURATION, help="Evict models not used for DURATION (e.g. 30d).")
@click.option("--keep-versions", type=click.IntRange(min=1), help="Per model, keep the newest N versions.")
@click.option("--min-free", type=SIZE, help="Evict until the disk of the store has SIZE free.")
@click.option("--grace", type=DURATION, help="Keep anything used or written more recently than this [1h].")
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@json_option
@pass_ctx
@with_store()
def prune(c: Ctx, store: Store, max_size: int | None, unused_for: float | None, keep_versions: int | None,
          min_free: int | None, grace: float | None, dry_run: bool, as_json: bool) -> None:
    """Remove unpinned, unused models and leftovers (LRU, age, version count, free space)."""
    from cachemgr.lifecycle.prune_exec import run_prune
    from cachemgr.lifecycle.prune_plan import PrunePolicy

    policy = PrunePolicy.from_settings(c.settings, max_size=max_size, unused_for=unused_for,
                                       keep_versions=keep_versions, min_free=min_free, grace=grace)
    bar = Bars(sys.stderr.isatty() and not as_json and not dry_run).new("prune", unit="item")
    try:
        plan, result = run_prune(c.settings, store, policy, dry_run=dry_run, bar=bar)
    finally:
        bar.close()
    if as_json:
        _emit_plan(dry_run, plan, result)
        return
    verb = "would evict" if dry_run else "evict"
    for e in plan.evict:
        click.echo(f"{verb}  {e.handle}  {format_size(e.size)}  frees {format_size(e.frees)}  {e.reason}")
    for p in plan.protected:
        click.echo(f"keep  {p.handle}  {p.reason}")
    if plan.snapshots or plan.manifests or plan.blobs or plan.temps:
        click.echo(f"leftovers: {plural(len(plan.snapshots), 'snapshot')}, {plural(len(plan.manifests), 'manifest')}, "
                   f"{plural(len(plan.blobs), 'blob')}, {plural(len(plan.temps), 'temp')} "
                   f"(older than the grace period of {format_age(policy.grace)})")
    for why in plan.unmet:
        click.echo(f"note: {why}", err=True)
    if result is None:
        click.echo(f"dry run: would free {format_size(plan.bytes_to_free)} "
                   f"({format_size(plan.size_before)} -> {format_size(plan.size_after)}); nothing deleted")
    else:
        for skipped in result.skipped:
            click.echo(f"skipped  {skipped}", err=True)
        click.echo(f"freed {format_size(result.freed_bytes)}; {plural(len(result.evicted), 'model')} evicted")


@command()
@click.argument("handles", nargs=-1, shell_complete=complete_handles)
@click.option("--deep", is_flag=True, help="Also load each model with tf.saved_model.load (in a subprocess).")
@click.option("--repair", is_flag=True, help="Re-fetch or rebuild what is corrupt, then restore the view.")
@click.option("--from-bundle", "bundle", type=click.Path(path_type=Path), help="Repair from this bundle file.")
@click.option("--max-duration", type=DURATION,
              help="Stop after DURATION; the next run continues where this one stopped.")
@json_option
@pass_ctx
@with_store()
def verify(c: Ctx, store: Store, handles: tuple[str, ...], deep: bool, repair: bool, bundle: Path | None,
           max_duration: float | None, as_json: bool) -> None:
    """Check every blob, manifest, snapshot, view link and SavedModel; exit 0 good, 11 corrupt, 12 repaired."""
    from cachemgr.lifecycle.scrub import run_verify
    from cachemgr.lifecycle.verify import VerifyOptions

    options = VerifyOptions(
        handles=tuple(handles), deep=deep, repair=repair or bundle is not None, bundle=bundle,
        max_duration=max_duration, bars=Bars(sys.stderr.isatty() and not as_json),
    )
    report = run_verify(c.settings, store, options)
    if as_json:
        emit_json(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
    outcome = report.outcome()
    if outcome.exit_code:
        if not as_json:
            click.echo(f"cachemgr: {outcome.message}", err=True)
        sys.exit(outcome.exit_code)


@command()
@json_option
@pass_ctx
@with_store()
def du(c: Ctx, store: Store, as_json: bool) -> None:
    """Per model: size, unique and shared bytes, last use, pinned, state (and its fix)."""
    from cachemgr.lifecycle.du import disk_usage
    from cachemgr.lifecycle.scan import scan

    report = disk_usage(scan(store, disk=False), time.time())
    if as_json:
        emit_json(report.to_json())
        return
    rows = [[m.handle, format_size(m.size), format_size(m.unique), format_size(m.shared), _when(m.last_use),
             m.pinned or "-", m.state] for m in report.models]
    click.echo(table(rows, ["HANDLE", "SIZE", "UNIQUE", "SHARED", "LAST USE", "PINNED", "STATE"]))
    for m in report.models:
        if m.fix:
            click.echo(f"{m.handle}: {m.fix}")
    click.echo(f"total {format_size(report.total)} in {report.blobs} blobs; "
               f"leftovers {format_size(report.leftover)}")


@command(name="rm")
@click.argument("handles", nargs=-1, required=True, shell_complete=complete_handles)
@click.option("--force", is_flag=True, help="Also remove pinned models (and their pins).")
@click.option("--dry-run", is_flag=True, help="Print what would go; delete nothing.")
@json_option
@pass_ctx
@with_store()
def rm(c: Ctx, store: Store, handles: tuple[str, ...], force: bool, dry_run: bool, as_json: bool) -> None:
    """Remove models: their refs, aliases and view links, and the blobs no other model uses."""
    from cachemgr.lifecycle.remove_exec import run_remove
    from cachemgr.lifecycle.remove_plan import plan_remove
    from cachemgr.lifecycle.scan import scan
    from cachemgr.store.refs import RefIndex

    index = RefIndex(store)
    targets = [index.require(text).handle for text in handles]  # parsed and found, before anything goes
    plan = plan_remove(scan(store, disk=False), targets, time.time(), force=force)
    refusal = plan.refusal()
    if refusal is not None:
        raise refusal
    result = None
    if not dry_run:
        bar = Bars(sys.stderr.isatty() and not as_json).new("rm", unit="item")
        try:
            result = run_remove(c.settings, store, plan, bar)
        finally:
            bar.close()
    if as_json:
        _emit_plan(dry_run, plan, result)
        return
    verb = "would remove" if dry_run else "remove"
    for e in plan.prune.evict:
        click.echo(f"{verb}  {e.handle}  {format_size(e.size)}  frees {format_size(e.frees)}")
    for p in plan.unpin:
        click.echo(f"{'would unpin' if dry_run else 'unpin'}  {p.handle}  (pinned by {p.who})")
    if result is None:
        click.echo(f"dry run: would free {format_size(plan.prune.bytes_to_free)} "
                   f"({plural(len(plan.prune.blobs), 'blob')}); nothing deleted")
        return
    for skipped in result.skipped:
        click.echo(f"skipped  {skipped}", err=True)
    click.echo(f"removed {plural(len(result.evicted), 'model')}; freed {format_size(result.freed_bytes)}")


COMMANDS = [pin, unpin, pins_cmd, prune, verify, du, rm]
