"""Many users, one store (issue 11): two real uids of one group share a store in a setgid directory.

Alice pulls and adds under umask 022, Bob works under umask 077 (the modes must not come from
the umask): he uses, loads, verifies, re-pulls, adds and prunes what Alice fetched, imports a
bundle she exported, and Alice pulls again. Every command exits 0, nothing says EACCES, and the store verifies for both.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import sys
from pathlib import Path

from tests.support.cli import Result
from tests.support.suite import Archives
from tests.support.users import ALICE, BOB, GROUP, Site

MYMUL = "https://tfhub.dev/google/mymul/1"
TEXT1 = "https://tfhub.dev/google/text-embed/1"
TEXT2 = "https://tfhub.dev/google/text-embed/2"

LOAD = """
import json, sys
import tensorflow as tf
import tensorflow_hub as hub
print("RESULT " + json.dumps(hub.load(sys.argv[1])(tf.constant([2.0])).numpy().tolist()))
"""


def ok(res: Result, what: str) -> Result:
    assert res.code == 0, f"{what}: exit {res.code}: {res.err.strip()[-2000:]}"
    for bad in ("Traceback", "Permission denied", "not permitted", "EACCES"):
        assert bad not in res.err + res.out, f"{what}: {bad!r} in {res.err.strip()[-2000:]}"
    return res


def bad_modes(store: Path) -> list[str]:
    """Everything in the store that the group could not use: dirs must be 2775, files group-readable, group G."""
    gid = grp.getgrnam(GROUP).gr_gid
    out: list[str] = []
    for root, dirs, files in os.walk(store):
        for name in [*dirs, *files, ""] if root == str(store) else [*dirs, *files]:
            path = Path(root, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if st.st_gid != gid:
                out.append(f"{path}: group {st.st_gid}")
            if stat.S_ISDIR(st.st_mode) and mode != 0o2775:
                out.append(f"{path}: directory mode {mode:04o}")
            if stat.S_ISREG(st.st_mode) and (mode & 0o044 != 0o044 or mode & 0o002):
                out.append(f"{path}: file mode {mode:04o}")
    return out


def test_two_users_pull_use_verify_repull_and_prune_one_store(site: Site, archives: Archives) -> None:
    text1 = site.file("text1.tar.gz", archives.text_v1)
    text2 = site.file("text2.tar.gz", archives.text_v2)

    ok(site.run(ALICE, "pull", MYMUL), "alice pull")
    ok(site.run(ALICE, "add", TEXT1, str(text1)), "alice add")
    assert bad_modes(site.store) == []
    assert site.store.stat().st_uid == site.users[ALICE].uid

    path = ok(site.run(BOB, "path", MYMUL, umask=0o077), "bob path").out.strip()
    assert Path(path, "saved_model.pb").is_file()
    load = site.as_user(BOB, [sys.executable, "-c", LOAD, MYMUL], umask=0o077,
                        env={"TFHUB_CACHE_DIR": str(site.store / "view")}, timeout=300)
    assert load.code == 0, load.err[-3000:]
    assert json.loads(next(x for x in load.out.splitlines() if x.startswith("RESULT "))[7:]) == [6.0]

    ok(site.run(BOB, "verify", umask=0o077), "bob verify")
    ok(site.run(BOB, "pull", "--refresh", MYMUL, umask=0o077), "bob pull --refresh")
    ok(site.run(BOB, "add", TEXT2, str(text2), umask=0o077), "bob add (shares vocab.txt with alice's model)")
    assert bad_modes(site.store) == [], "bob's writes under umask 077 are not usable by the group"
    ok(site.run(ALICE, "path", TEXT2), "alice path of bob's model")
    ok(site.run(ALICE, "verify"), "alice verify")

    bundle = site.shared / "text1.tar.zst"
    ok(site.run(ALICE, "export", TEXT1, "-o", str(bundle)), "alice export")

    ok(site.run(BOB, "prune", "--max-size", "0", "--grace", "0s", umask=0o077), "bob prune")
    for handle in (MYMUL, TEXT1, TEXT2):
        assert site.run(ALICE, "path", handle).code == 5, f"{handle} survived bob's prune"
    assert not list((site.store / "snapshots").iterdir()), "bob's prune left snapshots behind"
    assert not [p for p in (site.store / "blobs").rglob("*") if p.is_file()], "bob's prune left blobs behind"

    ok(site.run(BOB, "import", str(bundle), umask=0o077), "bob imports alice's bundle")
    ok(site.run(ALICE, "path", TEXT1), "alice path of the model bob imported")
    ok(site.run(ALICE, "pull", MYMUL), "alice pulls again")
    ok(site.run(ALICE, "verify"), "alice verify at the end")
    ok(site.run(BOB, "verify", umask=0o077), "bob verify at the end")
    assert bad_modes(site.store) == []
    assert list((site.store / "tmp").iterdir()) == [], "temps left behind"


CREATE = """
import sys
from pathlib import Path
from cachemgr.store.objects import Store
Store(Path(sys.argv[1])).create()
"""

HOLD = """
import os, sys
from pathlib import Path
from cachemgr.cluster.lease import lease_path, try_acquire
lease = try_acquire(Path(sys.argv[1]), "pull.x", node="n1", timeout=600)
assert lease is not None
print(oct(os.stat(lease_path(Path(sys.argv[1]), "pull.x")).st_mode & 0o777))
"""

READ = """
import sys
from pathlib import Path
from cachemgr.cluster.lease import lease_path, read_lease
state = read_lease(lease_path(Path(sys.argv[1]), "pull.x"))
print(state is not None and state.record is not None and state.record.node)
"""


def test_a_lease_taken_under_umask_077_is_readable_by_the_group(site: Site) -> None:
    made = site.as_user(ALICE, [sys.executable, "-c", CREATE, str(site.store)])
    assert made.code == 0, made.err[-2000:]
    held = site.as_user(BOB, [sys.executable, "-c", HOLD, str(site.store)], umask=0o077)
    assert held.code == 0, held.err[-2000:]
    assert held.out.strip() == "0o644", "bob's lease is not readable by the other users of the store"
    seen = site.as_user(ALICE, [sys.executable, "-c", READ, str(site.store)])
    assert seen.code == 0 and seen.out.strip() == "n1", seen.err[-2000:]


KILLED = """
import io, os, sys
from pathlib import Path
from cachemgr.ingest.unpack import TreeBuilder
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store
store = Store(Path(sys.argv[1]))
store.create()
builder = TreeBuilder(store, Limits(1 << 20, 100), "killed")
builder.add_dir("variables")
builder.add_file("variables/variables.index", 0o644, io.BytesIO(b"x"))
os._exit(9)  # dies mid-ingest: its temp stays for the next run to collect
"""


def test_the_temps_of_a_dead_ingest_are_collected_by_another_user(site: Site) -> None:
    dead = site.as_user(ALICE, [sys.executable, "-c", KILLED, str(site.store)])
    assert dead.code == 9, dead.err[-2000:]
    assert [p.name.split(".")[0] for p in (site.store / "tmp").iterdir()] == ["ingest"]
    ok(site.run(BOB, "pull", MYMUL, umask=0o077), "bob pull")
    assert list((site.store / "tmp").iterdir()) == [], "bob could not collect alice's dead temp"
