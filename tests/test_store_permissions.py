"""Store permissions (issue 10): world-writable store directories are refused, another user's store
is reported as such with the fix, and every EACCES is one line (exit 10), never a traceback.

The tests of other users run real commands as real uids (tests/support/users.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.cli import Cli, Result
from tests.support.suite import Archives
from tests.support.users import ALICE, BOB, EVE, GROUP, Site

MYMUL = "https://tfhub.dev/google/mymul/1"
TEXT1 = "https://tfhub.dev/google/text-embed/1"


def one_line_error(res: Result, *needles: str) -> str:
    """The command failed as a store permission error: exit 10, one line, no traceback, naming ``needles``."""
    assert res.code == 10, f"exit {res.code}: {res.err[-2000:]}"
    lines = [x for x in res.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("cachemgr: error: "), res.err[-2000:]
    assert "Traceback" not in res.err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_mode) for p in root.rglob("*"))


@pytest.mark.parametrize(("where", "mode"), [("view", 0o1777), ("view", 0o777), ("", 0o777), ("refs", 0o2777)])
def test_a_world_writable_store_directory_is_refused(cli: Cli, home: Path, tmp_path: Path, where: str,
                                                    mode: int) -> None:
    assert cli("pull", MYMUL).code == 0
    target = home / where if where else home
    os.chmod(target, mode)
    before = snapshot(home)
    commands: list[tuple[str, ...]] = [("pull", TEXT1), ("ls",)]
    if (where, mode) == ("view", 0o1777):  # every kind of command once: writers, readers, the daemon
        commands += [("path", MYMUL), ("verify",), ("daemon", "--workers", "1", "--socket", str(tmp_path / "d.sock"))]
    for args in commands:
        line = one_line_error(cli(*args), str(target), "world-writable", f"chmod o-w {target}")
        assert "swap" in line
    assert snapshot(home) == before, "a refused command changed the store"
    os.chmod(target, mode & ~0o002)
    assert cli("pull", TEXT1).code == 0, "the store is not usable once the fix is applied"


def test_a_fresh_store_has_no_world_writable_view_even_for_root(cli: Cli, home: Path) -> None:
    assert os.geteuid() == 0, "run the suite as root (as dev and CI do)"
    assert cli("pull", MYMUL).code == 0
    for d in [home, *(p for p in home.rglob("*") if p.is_dir() and not p.is_symlink())]:
        assert d.stat().st_mode & 0o002 == 0, f"{d} is world-writable"


def test_another_users_private_store_is_reported_with_the_fix(site: Site) -> None:
    store = site.root / "alice-store"  # hers, not setgid: a private store
    store.mkdir(mode=0o755)
    os.chown(store, site.users[ALICE].uid, site.users[ALICE].gid)
    assert site.run(ALICE, "pull", MYMUL, home=store).code == 0
    before = snapshot(store)
    res = site.run(BOB, "pull", TEXT1, home=store)
    one_line_error(res, f"store {store} is owned by {ALICE} and not writable by you", "--home",
                   f"ask for group access (chgrp -R GROUP {store};")
    assert snapshot(store) == before
    assert site.run(BOB, "ls", home=store).code == 0, "reading another user's store must work"
    assert MYMUL in site.run(BOB, "ls", home=store).out


def test_a_store_not_yet_shared_gets_a_fix_that_works(site: Site) -> None:
    assert site.run(ALICE, "pull", MYMUL).code == 0
    # A store made before cachemgr knew about groups: directories 0755 in the setgid directory.
    subprocess.run(["find", str(site.store), "-type", "d", "-exec", "chmod", "g-w", "{}", "+"], check=True)
    line = one_line_error(site.run(BOB, "pull", TEXT1), f"store {site.store} is owned by {ALICE}",
                          f"chgrp -R {GROUP} {site.store}")
    fix = line.split("ask for group access (", 1)[1].split(") or use --home", 1)[0]
    for command in fix.split("; "):
        res = site.as_user(ALICE, ["sh", "-c", command])
        assert res.code == 0, f"the fix {command!r} failed for the store's owner: {res.err}"
    res = site.run(BOB, "pull", TEXT1)
    assert res.code == 0, res.err[-2000:]
    assert site.run(BOB, "verify").code == 0


def test_a_user_outside_the_group_is_told_to_join_it(site: Site) -> None:
    assert site.run(ALICE, "pull", MYMUL).code == 0
    one_line_error(site.run(EVE, "pull", TEXT1), f"store {site.store} is owned by {ALICE}",
                   f"ask to be added to group {GROUP}")
    assert site.run(EVE, "path", MYMUL).code == 0, "a reader outside the group can still use the models"


def _first_blob(archive: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        data = tar.extractfile(member)
        assert data is not None
        return hashlib.sha256(data.read()).hexdigest()


def test_eacces_deep_in_the_store_is_one_line(site: Site, archives: Archives) -> None:
    assert site.run(ALICE, "pull", TEXT1).code == 0
    # One blob directory of the model bob wants was left by alice without group write.
    blocked = site.store / "blobs" / "sha256" / _first_blob(archives.mymul)[:2]
    blocked.mkdir(exist_ok=True)
    os.chown(blocked, site.users[ALICE].uid, -1)
    os.chmod(blocked, 0o2755)
    line = one_line_error(site.run(BOB, "pull", MYMUL), f"{blocked} is owned by {ALICE} and not writable by you")
    assert "Permission denied" in line
    assert site.run(BOB, "path", MYMUL).code == 5, "a failed pull left a model behind"
    assert site.run(BOB, "verify").code == 0
    assert list((site.store / "tmp").iterdir()) == [], "the failed pull left temps behind"
