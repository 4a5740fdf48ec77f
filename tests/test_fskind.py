"""How long a store's filesystem may show stale metadata (store/fskind.py), from mountinfo lines."""

from __future__ import annotations

from pathlib import Path

from cachemgr.store.fskind import cache_timeout, fs_type

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /scratch rw,relatime shared:20 - nfs4 srv:/export rw,vers=4.2
41 22 0:36 / /gluster rw,relatime shared:21 - fuse.glusterfs node1:/vol rw,user_id=0
42 41 0:37 / /gluster/local rw,relatime shared:22 - tmpfs tmpfs rw
43 22 0:38 / /lus rw shared:23 - lustre 10.0.0.1@tcp:/fs rw
44 22 0:39 / /odd\\040dir rw shared:24 - 9p trans rw
"""


def test_the_innermost_mount_names_the_filesystem() -> None:
    assert fs_type(Path("/home/u/.cache"), MOUNTINFO) == "ext4"
    assert fs_type(Path("/scratch/store"), MOUNTINFO) == "nfs4"
    assert fs_type(Path("/gluster/store/blobs"), MOUNTINFO) == "fuse.glusterfs"
    assert fs_type(Path("/gluster/local/x"), MOUNTINFO) == "tmpfs"  # a mount inside a mount
    assert fs_type(Path("/glusterfoo"), MOUNTINFO) == "ext4"  # a prefix of a name is not a parent
    assert fs_type(Path("/odd dir/s"), MOUNTINFO) == "9p"  # mountinfo escapes spaces


def test_coherent_filesystems_need_no_wait_and_caching_ones_do() -> None:
    assert cache_timeout(Path("/home/u"), MOUNTINFO) == 0.0
    assert cache_timeout(Path("/lus/store"), MOUNTINFO) == 0.0
    assert cache_timeout(Path("/gluster/store"), MOUNTINFO) == 1.0  # FUSE entry/attribute timeout
    assert cache_timeout(Path("/scratch/store"), MOUNTINFO) == 60.0  # NFS acregmax/acdirmax
    assert cache_timeout(Path("/odd dir/s"), MOUNTINFO) == 1.0  # unknown: a short wait
    assert cache_timeout(Path("/x"), "") == 1.0  # no mount table at all


def test_this_machines_own_table_is_read(tmp_path: Path) -> None:
    kind = fs_type(tmp_path)
    assert kind is not None and kind in Path("/proc/self/mountinfo").read_text()
