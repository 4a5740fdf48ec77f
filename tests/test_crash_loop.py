"""Crashes (issue 10): kill -9 at random moments, and at seeded fault points, across pull, add,
import, prune, verify --repair and a daemon fetch, on one store, at least 50 kills in all.

After each kill: ``cachemgr verify`` passes (a killed repair is first finished by the next
``verify --repair``), no ref points at a partial model, and the next completed command that
opens the store for writing has collected the dead runs' temps. The seed is printed
(``CRASH_SEED=N`` repeats a run); so are the figures: kills survived and fault points covered.
Models are small TensorFlow-free archives, so that only the CLI runs.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from cachemgr.client.daemon_client import call
from tests.support.cli import Cli
from tests.support.crashes import Outcome, Tally, partial_models, run_killed, small_archive, temps_of
from tests.support.daemons import Daemon
from tests.support.env import BASE_ENV
from tests.support.origin import FakeOrigin

pytestmark = pytest.mark.slow

RANDOM_KILLS = 24  # then more random runs until MIN_KILLS have been killed
MIN_KILLS = 50
DAEMON_KILLS = 4
FAULTS = {  # the windows a random kill can miss: each atomic step of each command
    "add": ["write:1", "write:2", "rename:1", "rename:2", "rename:3", "rename:4", "rename:5"],
    "pull": ["write:1", "rename:1", "rename:2", "rename:3", "rename:4"],
    "import": ["write:1", "rename:1", "rename:2", "rename:3"],
    "repair": ["rename:1", "rename:2", "rename:3"],
    "prune": ["rename:1"],
}
CLEANING = {"add", "pull", "import"}  # open the store with clean=True
OPS = ("add", "pull", "import", "prune", "repair")


class Loop:
    def __init__(self, root: Path, origin: FakeOrigin, seed: int) -> None:
        self.rng = random.Random(seed)
        self.root = root
        self.origin = origin
        self.home = root / "home"
        self.env = dict(BASE_ENV, CACHEMGR_HOME=str(self.home), CACHEMGR_MIRRORS=origin.mirrors,
                        CACHEMGR_RETRIES="1", CACHEMGR_BACKOFF="0.05", CACHEMGR_WORKERS="1",
                        XDG_CONFIG_HOME=str(root / "xdg"))
        self.cli = Cli(self.home, self.env)
        self.archives = [root / f"m{i}.tar.gz" for i in range(3)]
        for i, path in enumerate(self.archives):
            path.write_bytes(small_archive(i))
        self.bundles: list[Path] = []
        self.dead: set[int] = set()
        self.serial = 0
        self.tally = Tally()

    def make_bundles(self) -> None:
        src = Cli(self.root / "src", self.env)
        for i, archive in enumerate(self.archives):
            assert src("add", f"https://tfhub.dev/crash/bundled-{i}/1", str(archive)).code == 0
            out = self.root / f"b{i}.tar.zst"
            r = src("export", f"https://tfhub.dev/crash/bundled-{i}/1", "-o", str(out))
            assert r.code == 0, r.err
            self.bundles.append(out)

    def args(self, op: str) -> list[str]:
        self.serial += 1
        if op == "add":
            handle = f"https://tfhub.dev/crash/added-{self.rng.randrange(4)}/1"
            return ["add", handle, str(self.rng.choice(self.archives))]
        if op == "pull":
            name = f"pulled-{self.serial}"
            self.origin.add_model("crash", name, 1, self.rng.choice(self.archives).read_bytes())
            return ["pull", f"https://tfhub.dev/crash/{name}/1"]
        if op == "import":
            return ["import", str(self.rng.choice(self.bundles))]
        if op == "prune":
            return ["prune", "--max-size", self.rng.choice(["0", "300K"]), "--grace", "0s"]
        self.damage()
        return ["verify", "--repair"]

    def damage(self) -> None:
        """Remove one file of one model's snapshot: repair rebuilds it from the blobs.

        Only a snapshot that a ref names: verify checks models, and an orphan snapshot is prune's.
        """
        named = {json.loads(p.read_bytes())["manifest"] for p in (self.home / "refs").glob("*.json")}
        snaps = sorted(self.home / "snapshots" / d for d in named if (self.home / "snapshots" / d).is_dir())
        if not snaps:
            return
        files = sorted(p for p in self.rng.choice(snaps).rglob("*") if p.is_file())
        if files:
            victim = self.rng.choice(files)
            os.chmod(victim.parent, 0o755)
            victim.unlink()

    def after(self, op: str, outcome: Outcome, fault: str | None) -> None:
        if outcome.killed:
            self.tally.count(self.tally.kills, op)
            if fault is not None and outcome.code != -9:
                self.tally.faults.add(f"{op}:{fault}")
            self.dead.add(outcome.pid)
            self.check(op)
            return
        allowed = {0, 12} if op == "repair" else {0}
        assert outcome.code in allowed, f"{op} (fault {fault}) exited {outcome.code}: {outcome.err[-2000:]}"
        self.tally.count(self.tally.completed, op)
        if op in CLEANING:
            left = temps_of(self.home, self.dead)
            assert left == [], f"{op} completed, but the dead runs' temps are still there: {left}"
            self.tally.collected = len(self.dead)
        if op == "repair":
            self.check(op)

    def check(self, op: str) -> None:
        if op == "repair":
            r = self.cli("verify", "--repair", "--json")  # finish what the killed repair began
            assert r.code in (0, 12), f"after a killed repair, verify --repair exited {r.code}: {r.out}{r.err}"
        r = self.cli("verify", "--json")
        assert r.code == 0, f"after a killed {op}, verify exited {r.code}: {r.out}{r.err}"
        assert json.loads(r.out)["problems"] == []
        assert partial_models(self.home) == [], f"after a killed {op}: refs point at partial models"

    def daemon_fetch(self, i: int) -> None:
        name = f"daemon-{i}"
        self.origin.add_model("crash", name, 1, self.rng.choice(self.archives).read_bytes())
        d = Daemon(self.home, self.env, sock=self.root / f"d{i}.sock").wait_ready()
        answer: list[object] = []

        def ask() -> None:
            try:
                answer.append(call(str(d.sock), "POST", "/v1/resolve", {"handle": f"https://tfhub.dev/crash/{name}/1"},
                                   timeout=60))
            except Exception as exc:  # noqa: BLE001 - the daemon is killed under it
                answer.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(self.rng.uniform(0.0, 1.0))
        d.stop(sig=9)
        asker.join(60)
        self.dead.add(d.proc.pid)
        self.tally.count(self.tally.kills, "daemon fetch")
        self.check("daemon fetch")


def test_kill_minus_nine_anywhere_leaves_a_store_that_verifies(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"crash loop seed {seed} (CRASH_SEED={seed} repeats it)")
    with FakeOrigin() as origin:
        loop = Loop(tmp_path, origin, seed)
        loop.make_bundles()
        assert loop.cli("add", "https://tfhub.dev/crash/first/1", str(loop.archives[0])).code == 0
        plan: list[tuple[str, str | None]] = [(op, f) for op, specs in FAULTS.items() for f in specs]
        plan += [(loop.rng.choice(OPS), None) for _ in range(RANDOM_KILLS)]
        plan += [("daemon", None)] * DAEMON_KILLS
        loop.rng.shuffle(plan)
        for i, (op, fault) in enumerate(plan):
            if op == "daemon":
                loop.daemon_fetch(i)
                continue
            args = loop.args(op)
            env = dict(loop.env, CACHEMGR_FAULT_AT=fault) if fault else loop.env
            if fault:
                loop.tally.faults_tried.add(f"{op}:{fault}")
            delay = None if fault else loop.rng.uniform(0.3, 1.8)
            loop.after(op, run_killed(args, env, delay), fault)
        extra = 0
        while sum(loop.tally.kills.values()) < MIN_KILLS and extra < 150:  # make up for runs that ended first
            op, extra = loop.rng.choice(OPS), extra + 1
            if extra % 2:  # a random moment; on a fast machine many commands end first
                loop.after(op, run_killed(loop.args(op), loop.env, loop.rng.uniform(0.05, 1.0)), None)
            else:  # so every other one stops at a seeded rename or write: it cannot miss its window
                fault = f"{loop.rng.choice(('rename', 'write'))}:{loop.rng.randint(1, 3)}"
                loop.after(op, run_killed(loop.args(op), dict(loop.env, CACHEMGR_FAULT_AT=fault), None), fault)
        # the last word: a completed writing command collects every dead run's temps
        assert loop.cli("add", "https://tfhub.dev/crash/last/1", str(loop.archives[1])).code == 0
        assert temps_of(loop.home, loop.dead) == [], temps_of(loop.home, loop.dead)
        loop.tally.collected = len(loop.dead)
        loop.check("the loop")
    summary = loop.tally.summary(seed)
    print(summary)
    (tmp_path.parent / "crash-loop-figures.txt").write_text(summary + "\n")
    assert sum(loop.tally.kills.values()) >= MIN_KILLS, summary
    assert len(loop.tally.faults) >= 15, summary


def test_an_update_stopped_at_each_rename_leaves_the_old_model_or_the_new(tmp_path: Path) -> None:
    """Deterministic: ``add`` replacing a model, stopped before its 1st, 2nd, ... rename in turn."""
    home = tmp_path / "home"
    env = dict(BASE_ENV, CACHEMGR_HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    cli = Cli(home, env)
    archives = [tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"]
    for i, path in enumerate(archives):
        path.write_bytes(small_archive(10 + i, size=16 * 1024))
    handle = "https://tfhub.dev/crash/updated/1"
    assert cli("add", handle, str(archives[0])).code == 0
    digests = set()
    stopped = 0
    for n in range(1, 16):
        if n > 1:
            assert cli("add", handle, str(archives[0])).code == 0  # back to the old model
        outcome = run_killed(["add", handle, str(archives[1])], dict(env, CACHEMGR_FAULT_AT=f"rename:{n}"), None)
        if not outcome.killed:
            assert outcome.code == 0, outcome.err
            break
        stopped += 1
        r = cli("verify", "--json")  # the first run after the crash also finishes its half-done update
        assert r.code == 0, f"stopped before rename {n}: verify exited {r.code}: {r.out}{r.err}"
        (ref_file,) = (home / "refs").glob("*.json")
        ref = json.loads(ref_file.read_bytes())
        digests.add(ref["manifest"])
        assert partial_models(home) == []
        view = home / "view"
        assert all(os.readlink(view / e) == f"../snapshots/{ref['manifest']}"
                   for e in os.listdir(view) if (view / e).is_symlink()), "the view disagrees with the ref"
    print(f"update stopped before each of its first {stopped} renames; the ref named {len(digests)} model(s)")
    assert stopped >= 5
