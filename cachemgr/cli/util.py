"""Shared plumbing of the click commands: lazy settings, --json, error reporting."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cachemgr.cli.output import fail
from cachemgr.errors import CachemgrError
from cachemgr.settings import Settings, load_settings


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


def run_reporting(as_json: bool, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except CachemgrError as err:
        fail(err, as_json)


