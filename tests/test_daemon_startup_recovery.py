"""A daemon starting on a store a killed run left half-published makes it whole before it serves.

The CLI does this before each command (``cli/util.with_store``); the daemon does the same, with
the same library function (``cachemgr.lifecycle.recover.recover_dead_runs``), in a store job at
start-up. ``add`` replacing a model is stopped before its 1st, 2nd, ... rename in turn
(``CACHEMGR_FAULT_AT=rename:N``, as abrupt as ``kill -9``); each time it leaves a publish note
and a view that disagrees with the ref, a daemon is started and the store is looked at directly,
before any CLI command runs: no note left, the view agrees with the ref, every model whole, and
the daemon serves the ref's model. Then ``verify`` passes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.cli import Cli
from tests.support.crashes import partial_models, run_killed, small_archive
from tests.support.daemons import Daemon
from tests.support.env import BASE_ENV

HANDLE = "https://tfhub.dev/crash/updated/1"


def _state(home: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(publish notes in tmp/, the ref, the view's links and their targets)."""
    notes = sorted(n for n in os.listdir(home / "tmp") if n.startswith("publish."))
    (ref_file,) = (home / "refs").glob("*.json")
    ref = json.loads(ref_file.read_bytes())
    view = home / "view"
    links = {e: os.readlink(view / e) for e in os.listdir(view) if (view / e).is_symlink()}
    return notes, ref, links


def _agrees(ref: dict[str, str], links: dict[str, str]) -> bool:
    return bool(links) and all(t == f"../snapshots/{ref['manifest']}" for t in links.values())


def test_the_daemon_finishes_a_dead_runs_half_done_update_before_it_serves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(BASE_ENV, CACHEMGR_HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    cli = Cli(home, env)
    archives = [tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"]
    for i, path in enumerate(archives):
        path.write_bytes(small_archive(20 + i, size=16 * 1024))
    assert cli("add", HANDLE, str(archives[0])).code == 0
    run = tmp_path / "run"
    run.mkdir()
    healed = []
    for n in range(1, 16):
        if n > 1:
            assert cli("add", HANDLE, str(archives[0])).code == 0  # back to the old model
        outcome = run_killed(["add", HANDLE, str(archives[1])], dict(env, CACHEMGR_FAULT_AT=f"rename:{n}"), None)
        if not outcome.killed:
            assert outcome.code == 0, outcome.err
            break
        notes, ref, links = _state(home)
        if not notes or _agrees(ref, links):
            continue  # stopped where nothing is half-done
        d = Daemon(home, {**env, "CACHEMGR_OFFLINE": "1", "CACHEMGR_WORKERS": "1"}, rundir=run)
        try:
            d.wait_ready(60)
            notes, ref, links = _state(home)  # as the daemon's start-up left it: no CLI command ran yet
            assert notes == [], f"stopped before rename {n}: the dead run's note is still there: {notes}"
            assert _agrees(ref, links), f"stopped before rename {n}: the view disagrees with the ref: {links}, {ref}"
            assert partial_models(home) == []
            code, doc = d.call("POST", "/v1/resolve", {"handle": HANDLE})
            assert code == 200 and doc["manifest"] == ref["manifest"] and not doc["fetched"], doc
            assert "finished what dead runs left half-done" in d.output(), d.output()
        finally:
            d.stop()
        healed.append(n)
        r = cli("verify", "--json")
        assert r.code == 0, f"stopped before rename {n}: verify exited {r.code}: {r.out}{r.err}"
    print(f"the daemon made the store whole at start-up after the update was stopped before renames {healed}")
    assert healed, "no stop left a half-done update: the test checked nothing"
