"""Printing results for people (tables) and for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cachemgr.errors import CachemgrError, exit_code_for


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def fail(err: CachemgrError, as_json: bool) -> None:
    """Report ``err`` as one line (or a JSON object) and exit with its code."""
    code = exit_code_for(err)
    if as_json:
        emit_json({"error": {"type": err.code, "message": str(err), "exit_code": code}})
    else:
        click.echo(f"cachemgr: error: {err}", err=True)
    sys.exit(code)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
