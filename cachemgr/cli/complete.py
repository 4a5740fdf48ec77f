"""Shell completion of the handles in the store (click's ``shell_complete`` on handle arguments).

Subcommands and options complete through click itself (``_CACHEMGR_COMPLETE=bash_source``,
``zsh_source``, ``fish_source``: README, "Shell completion"). A handle argument completes from
the refs of the store that ``--home`` / ``CACHEMGR_HOME`` / the config name: one directory
listing and one small read per model, and never an error (a completion that raises would
print a traceback into the user's shell), so a missing or broken store completes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem

from cachemgr.settings import load_settings

MAX_ITEMS = 2000  # a store with more models still completes, from the first refs read


def stored_handles(home: Path) -> list[str]:
    """The handles of the refs under ``home`` (unreadable refs skipped), sorted."""
    out: list[str] = []
    try:
        entries = list(os.scandir(home / "refs"))
    except OSError:
        return out
    for entry in entries[:MAX_ITEMS]:
        if not entry.name.endswith(".json"):
            continue
        try:
            with open(entry.path, "rb") as fh:
                handle = json.loads(fh.read(65536)).get("handle")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(handle, str):
            out.append(handle)
    return sorted(out)


def _home(ctx: click.Context) -> Path:
    root = ctx.find_root()
    params: dict[str, Any] = root.params
    config = params.get("config")
    return load_settings(os.environ, config, {"home": params.get("home")}).home


def complete_handles(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Stored handles that start with what was typed (nothing at all if anything goes wrong)."""
    try:
        return [CompletionItem(h) for h in stored_handles(_home(ctx)) if h.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never fail in the user's shell
        return []
