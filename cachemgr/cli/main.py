"""The ``cachemgr`` command line: the group, its global options, and lazily loaded commands.

A command's module is imported only when that command runs (or ``--help`` lists them all),
so ``cachemgr path`` and ``cachemgr env`` do not pay for aiohttp, zstandard or TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from cachemgr import __version__
from cachemgr.cli.util import Ctx, Group, report_usage_error

# command name -> the module that defines it (each module's COMMANDS lists its commands)
LAZY_COMMANDS: dict[str, str] = {
    **dict.fromkeys(["pull", "add", "env", "ls", "info", "path"], "cachemgr.cli.models"),
    **dict.fromkeys(["pin", "unpin", "pins", "prune", "verify", "du", "rm"], "cachemgr.cli.lifecycle"),
    **dict.fromkeys(["export", "import", "inventory", "keygen"], "cachemgr.cli.bundle"),
    **dict.fromkeys(["daemon", "status", "shim"], "cachemgr.cli.daemon"),
    "push": "cachemgr.cli.oci",
    **dict.fromkeys(["nodes"], "cachemgr.cli.cluster"),
}


class LazyGroup(Group):
    """Imports a command's module when the command is asked for (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in LAZY_COMMANDS:
            return found
        module = importlib.import_module(LAZY_COMMANDS[cmd_name])
        for command in module.COMMANDS:
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cachemgr")
@click.option("--home", type=click.Path(path_type=Path), help="Store directory [CACHEMGR_HOME].")
@click.option("--config", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--offline", is_flag=True, default=None, help="No network at all [CACHEMGR_OFFLINE].")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, config: Path | None, offline: bool | None, debug: bool) -> None:
    """Offline cache manager and mirror for TensorFlow Hub models."""
    ctx.obj = Ctx(config, {"home": home, "offline": offline}, debug)


def main() -> None:
    try:
        code = cli.main(prog_name="cachemgr", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.format_message())
        sys.exit(2)
    except click.ClickException as err:
        report_usage_error(err)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("cachemgr: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
