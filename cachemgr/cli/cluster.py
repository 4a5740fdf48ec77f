"""Cluster commands: ``nodes`` (thin: the report is lifecycle/nodes_report.py)."""

from __future__ import annotations

import time

import click

from cachemgr.cli.output import emit_json, table
from cachemgr.cli.util import Ctx, command, json_option, pass_ctx, with_store
from cachemgr.store.objects import Store
from cachemgr.units import format_age, plural


@command()
@json_option
@pass_ctx
@with_store()
def nodes(c: Ctx, store: Store, as_json: bool) -> None:
    """The nodes seen in the store: last heartbeat, live leases, models used within the grace."""
    from cachemgr.lifecycle.nodes_report import nodes_report
    from cachemgr.lifecycle.prune_plan import PrunePolicy
    from cachemgr.lifecycle.scan import scan

    now = time.time()
    policy = PrunePolicy.from_settings(c.settings)
    rows = nodes_report(scan(store, disk=False), policy, now)
    if as_json:
        emit_json({"this_node": c.settings.node_id, "node_timeout": policy.node_timeout,
                   "nodes": [r.to_json() for r in rows]})
        return
    if not rows:
        click.echo(f"no node has used {store.home} yet")
        return
    body = [[r.node + (" (this node)" if r.node == _tag(c.settings.node_id) else ""),
             f"{format_age(now - r.heartbeat)} ago" if r.heartbeat else "-",
             f"silent {format_age(now - r.last_seen)} (holds nothing back)" if r.silent else "live",
             ", ".join(r.leases) or "-", plural(len(r.used), "model")] for r in rows]
    click.echo(table(body, ["NODE", "HEARTBEAT", "STATE", "LEASES", "USED IN GRACE"]))


def _tag(node_id: str) -> str:
    from cachemgr.store.usage import tag_of

    return tag_of(node_id)


COMMANDS = [nodes]
