"""Re-linking an alias that already points at the right target is a no-op: no rename (issue 11).

Every publish of a model (a second pull, a refresh, a pull that finds the model present)
links its aliases in the view again. A link that is already right must stay the same inode:
on a shared store, renames of many nodes' temp links onto one ``view/<sha1>`` at once are what
hung GlusterFS. A wrong link is still put right.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.support.cli import Cli

TFHUB = "https://tfhub.dev/google/mymul/1"


def _link(home: Path) -> os.stat_result:
    return os.lstat(home / "view" / hashlib.sha1(TFHUB.encode()).hexdigest())


def test_republishing_keeps_a_right_link_and_fixes_a_wrong_one(cli: Cli, home: Path) -> None:
    assert cli("pull", TFHUB).code == 0
    first = _link(home)
    view = home / "view" / hashlib.sha1(TFHUB.encode()).hexdigest()
    target = os.readlink(view)
    for args in (("pull", TFHUB), ("pull", "--refresh", TFHUB)):  # present, then fetched and recorded again
        r = cli(*args)
        assert r.code == 0, r.err
        again = _link(home)
        assert (again.st_ino, again.st_ctime_ns) == (first.st_ino, first.st_ctime_ns), f"{args} replaced the link"
    assert not [p for p in (home / "tmp").iterdir() if p.name.startswith("l.")], "a temp link was left behind"

    os.unlink(view)
    os.symlink("../snapshots/" + "0" * 64, view)  # wrong: a re-publish must put it right
    assert cli("pull", "--refresh", TFHUB).code == 0
    assert os.readlink(view) == target and _link(home).st_ino != first.st_ino
