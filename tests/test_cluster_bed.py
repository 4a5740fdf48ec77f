"""The GlusterFS test bed itself: nodes with their own FUSE mounts at one path, and the file
operations the store relies on across bricks; then a model added on one node is used on another."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.cluster import SharedStore
from tests.support.gluster import GlusterBed, Node
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives

MYMUL = "https://tfhub.dev/google/mymul/1"


def mount_line(node: Node, mount: Path) -> str:
    lines = [x for x in node.sh("cat /proc/self/mountinfo").splitlines() if x.split()[4] == str(mount)]
    assert lines, f"{node.name}: nothing mounted at {mount}"
    return lines[-1]


def brick_of(bed: GlusterBed, rel: str) -> int:
    """The brick holding the data of ``rel`` (DHT link files, mode ---------T, do not count)."""
    found = []
    for i, brick in enumerate(bed.volume.bricks):
        p = brick / rel
        if p.exists() and stat.S_IMODE(p.lstat().st_mode) != 0o1000:
            found.append(i)
    assert len(found) == 1, f"{rel} is on bricks {found}"
    return found[0]


def test_each_node_has_its_own_fuse_mount_at_the_same_path(gluster_bed: GlusterBed) -> None:
    a, b = gluster_bed.nodes[:2]
    line_a, line_b = mount_line(a, gluster_bed.mount), mount_line(b, gluster_bed.mount)
    assert " - fuse.glusterfs " in line_a and " - fuse.glusterfs " in line_b, (line_a, line_b)
    # Two mounts, two FUSE connections (device numbers), two namespaces: their own client caches.
    assert line_a.split()[2] != line_b.split()[2], (line_a, line_b)
    assert os.readlink(f"/proc/{a.holder.pid}/ns/mnt") != os.readlink(f"/proc/{b.holder.pid}/ns/mnt")
    # This process does not see the nodes' mounts: only its own, elsewhere.
    assert not os.path.ismount(gluster_bed.mount)
    assert os.path.ismount(gluster_bed.host)
    d = gluster_bed.mount / "bed-seen"
    a.sh(f"mkdir -p {d} && echo from-a > {d}/f")
    assert b.sh(f"cat {d}/f") == "from-a\n"
    b.sh(f"echo from-b >> {d}/f")
    assert a.sh(f"cat {d}/f") == "from-a\nfrom-b\n"
    assert (gluster_bed.on_host(d) / "f").read_text() == "from-a\nfrom-b\n"


OPS = r"""
import errno, os, sys
d, src, other, op = sys.argv[1:5]
if op == "excl":
    try:
        fd = os.open(os.path.join(d, other), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, src.encode()); os.close(fd); print("created")
    except FileExistsError:
        print("exists")
elif op == "link":
    os.link(os.path.join(d, src), os.path.join(d, other)); print(os.stat(os.path.join(d, other)).st_nlink)
elif op == "symlink":
    os.symlink(src, os.path.join(d, other)); print(open(os.path.join(d, other)).read())
elif op == "rename":
    os.rename(os.path.join(d, src), os.path.join(d, other)); print(open(os.path.join(d, other)).read())
"""


def test_links_renames_and_exclusive_create_work_across_bricks(gluster_bed: GlusterBed) -> None:
    a, b = gluster_bed.nodes[:2]
    rel = "bed-ops"
    d = gluster_bed.mount / rel
    a.sh(f"mkdir -p {d} && for i in $(seq 0 23); do echo n$i > {d}/n$i; done")
    where = {f"n{i}": brick_of(gluster_bed, f"{rel}/n{i}") for i in range(24)}
    on0 = [n for n, w in where.items() if w == 0]
    on1 = [n for n, w in where.items() if w == 1]
    assert len(on0) >= 3 and len(on1) >= 3, f"24 names did not spread over both bricks: {where}"

    def ops(node: Node, src: str, other: str, op: str) -> str:
        proc = node.run(sys.executable, "-c", OPS, str(d), src, other, op)
        assert proc.returncode == 0, f"{op} {src} -> {other} on {node.name}: {proc.stderr}"
        return proc.stdout.strip()

    # Names that hash to the other brick are freed, then used as targets from brick 0's files.
    a.sh(f"rm {d}/{on1[0]} {d}/{on1[1]} {d}/{on1[2]}")
    assert ops(a, on0[0], on1[0], "link") == "2"
    assert b.sh(f"cat {d}/{on1[0]}") == f"{on0[0]}\n"
    assert b.sh(f"stat -c %h {d}/{on0[0]}") == "2\n"
    assert ops(a, on0[1], on1[1], "symlink") == f"{on0[1]}"
    assert b.sh(f"readlink {d}/{on1[1]} && cat {d}/{on1[1]}") == f"{on0[1]}\n{on0[1]}\n"
    assert ops(a, on0[2], on1[2], "rename") == f"{on0[2]}"
    assert b.sh(f"cat {d}/{on1[2]}; test ! -e {d}/{on0[2]} && echo gone") == f"{on0[2]}\ngone\n"
    # O_EXCL: of two nodes creating one name (on either brick), only the first succeeds.
    for name in (on0[3], on1[3]):
        a.sh(f"rm {d}/{name}")
        assert ops(a, "from-a", name, "excl") == "created"
        assert ops(b, "from-b", name, "excl") == "exists"
        assert b.sh(f"cat {d}/{name}") == "from-a"


def test_a_model_added_on_one_node_is_used_offline_on_another(
    shared_store: Callable[..., SharedStore], gluster_bed: GlusterBed, archives: Archives, origin: FakeOrigin,
    tmp_path: Path,
) -> None:
    store = shared_store()
    n1, n2 = gluster_bed.nodes[:2]
    archive = tmp_path / "mymul.tar.gz"
    archive.write_bytes(archives.mymul)
    r = store.cli(n1, "add", MYMUL, str(archive))
    assert r.code == 0, r.err
    p1, p2 = store.cli(n1, "path", MYMUL), store.cli(n2, "path", MYMUL)
    assert p1.code == 0 and p2.code == 0, (p1.err, p2.err)
    assert p1.out == p2.out and p2.out.startswith(str(store.home)), (p1.out, p2.out)
    v = store.cli(n2, "verify")
    assert v.code == 0, v.out + v.err
    # The view is one absolute path on every node, and it resolves there the same way.
    key = store.cli(n2, "env").out
    assert f"TFHUB_CACHE_DIR={store.view}" in key, key

    # unshare -n composes with nsenter: no network inside, the store still there.
    host, port = origin.base.removeprefix("http://").split(":")
    probe = n2.run(sys.executable, "-c", "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], "
                   "int(sys.argv[2])), 2); print('reachable')\nexcept OSError as e: print('unreachable', e)",
                   host, port, offline=True)
    assert probe.stdout.startswith("unreachable"), probe.stdout + probe.stderr
    out = store.hub(n2, "plain", MYMUL, offline=True)
    assert out["call"] == [6.0], out
    assert out["path"].startswith(str(store.view)), out
    assert os.path.realpath(store.host(Path(out["path"]))).startswith(str(store.host_home)), out
    assert origin.completed("gcs") == 0  # nothing was downloaded, by anyone
