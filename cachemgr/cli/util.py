"""Shared plumbing of the click commands: settings from the context, the store, option types, errors.

Every command is a :class:`Command`, so there is one place where a ``CachemgrError`` (or an
unexpected ``OSError``) becomes one line on stderr, or a JSON object with ``--json``, and its
exit code from ``errors.EXIT_CODES``. Bad option values and click's own usage errors get the
same one-line style and exit 2 (``main``). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cachemgr.cli.output import fail
from cachemgr.errors import CachemgrError, ConfigError, StoreError, UsageError
from cachemgr.lifecycle.recover import recover_dead_runs
from cachemgr.settings import Settings, load_settings
from cachemgr.store import faults
from cachemgr.store.fs import NO_SPACE, disk_error
from cachemgr.store.objects import open_store
from cachemgr.store.perms import DENIED
from cachemgr.units import parse_duration, parse_size

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctx:
    config: Path | None
    overrides: dict[str, Any]
    debug: bool = False
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(os.environ, self.config, self.overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Ctx)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def os_error(exc: OSError) -> StoreError:
    """An unexpected OS error as one line that names the path and what to check."""
    where = exc.filename or "a file"
    if exc.filename2:
        where = f"{exc.filename} -> {exc.filename2}"
    if exc.errno in NO_SPACE | DENIED:  # whose the path is and how to share it (store/perms.py)
        return disk_error(exc, where)
    return StoreError(f"{where}: {exc.strerror or exc}; check that it exists, that there is space, and that "
                      "this user may read and write it (owner, group, mode)")


class Command(click.Command):
    """A command whose library errors become one line (or JSON) and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        as_json = bool(ctx.params.get("as_json"))
        state = ctx.find_object(Ctx)
        try:
            return super().invoke(ctx)
        except CachemgrError as err:
            if state is not None and state.debug:
                raise
            fail(err, as_json)
        except OSError as exc:
            if state is not None and state.debug:
                raise
            fail(os_error(exc), as_json)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: still one line, never a traceback (unless --debug)
            if state is not None and state.debug:
                raise
            fail(CachemgrError(f"internal error ({type(exc).__name__}: {exc}); run the command again with "
                               "--debug and report the traceback"), as_json)


class Group(click.Group):
    command_class = Command


def command(name: str | None = None, **attrs: Any) -> Callable[[F], click.Command]:
    """``@click.command`` for this CLI (one error path for all)."""
    return click.command(name, cls=Command, **attrs)


def with_store(*, create: bool = False, missing_ok: bool = False, clean: bool = False) -> Callable[[F], F]:
    """Pass the command its store as ``store`` (after ``Ctx``), opened one way for all commands.

    ``create``: make the store if needed (the commands that fill one). Otherwise a missing
    store is an error, unless ``missing_ok`` (then the command sees an empty store).
    ``clean``: collect the stale temps of dead runs first (what writes; prune plans them itself).
    """
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(c: Ctx, *args: Any, **kwargs: Any) -> Any:
            store = open_store(c.settings, create=create, missing_ok=missing_ok, clean=False)
            if store.exists():  # dead runs' half-done publishes and prunes, then (clean) their temps
                recover_dead_runs(c.settings, store, collect_temps=clean)
            store.fault = faults.from_setting(c.settings.fault_at)  # the crash tests' hook; unset: None
            return fn(c, store, *args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


from_file_option = click.option(
    "--from-file", "from_file", type=click.Path(allow_dash=True, path_type=Path),
    help="Also read handles from FILE, one per line ('#' starts a comment; - is stdin).")


def handles_from(args: tuple[str, ...], from_file: Path | None) -> list[str]:
    """The handles given as arguments plus those in ``--from-file``, in order, each once."""
    handles = list(args)
    if from_file is not None:
        try:
            text = sys.stdin.read() if str(from_file) == "-" else from_file.read_text()
        except OSError as exc:
            raise UsageError(f"--from-file {from_file}: {exc.strerror}; give a readable file of handles") from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                handles.append(line)
    if not handles:
        raise UsageError("no handles given; name them as arguments or with --from-file FILE")
    return list(dict.fromkeys(handles))


class _Parsed(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.4 on
    """An option value parsed by one of the library's parsers; a bad value is a usage error."""

    def __init__(self, name: str, parse: Callable[[str, str], float | int]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        name = f"--{param.name.replace('_', '-')}" if param and param.name else self.name
        try:
            return self._parse(value, name)
        except ConfigError as err:
            self.fail(str(err).removeprefix(f"{name}: "), param, ctx)


SIZE = _Parsed("size", parse_size)
DURATION = _Parsed("duration", parse_duration)


def report_usage_error(err: click.ClickException) -> None:
    """Click's usage errors in the CLI's one-line style, exit 2 (like a bad value of ours)."""
    where = "cachemgr"
    if isinstance(err, click.UsageError) and err.ctx is not None:
        where = err.ctx.command_path
    message = err.format_message().replace("\n", " ")
    click.echo(f"cachemgr: error: {message} (see `{where} --help`)", err=True)
    sys.exit(err.exit_code if not isinstance(err, click.UsageError) else 2)
