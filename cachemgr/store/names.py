"""Moving a store file aside and back on a network filesystem whose lookups can lie.

On GlusterFS a node may, for seconds after another node moved a store file away (a prune
filling its trash), still find the file under its old name by lookup (the same inode, now
under its new name) while the directory listing no longer shows it. Seen in the repeated-kills
test (tests/test_cluster_kills.py) 3 s after the move: ``link(2)`` onto that name fails with
EEXIST, a rename of another link of the same inode onto it does nothing (the kernel takes them
for one file), and ``unlink(2)`` of it removed the file under its new name. So putting a file
back asks the listing, never a lookup, and where a name still lies a fresh copy (another
inode) is renamed onto it. A file is moved aside by ``link`` then ``unlink``: the name goes
the way a plain delete does, and a crash in between leaves it in both places, which is safe.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cachemgr.store.fs import remove_quietly, unique_name


def listed(path: Path) -> bool:
    """Whether ``path``'s directory lists it (not whether a lookup finds it)."""
    try:
        with os.scandir(path.parent) as entries:
            return any(e.name == path.name for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def move_aside(src: Path, dest: Path) -> bool:
    """Move ``src`` to ``dest`` (a new name in a trash); False if ``src`` is gone.

    A directory is renamed; a file is linked, then unlinked (see the module docstring), or
    renamed where the kernel refuses a link to another user's file (``protected_hardlinks``)."""
    try:
        if src.is_dir() and not src.is_symlink():
            os.rename(src, dest)
            return True
        os.link(src, dest, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except PermissionError:  # another user's file (fs.protected_hardlinks): rename, as before
        try:
            os.rename(src, dest)
        except FileNotFoundError:
            return False
        return True
    try:
        os.unlink(src)
    except FileNotFoundError:
        pass  # another prune took the name meanwhile: ours is in our trash all the same
    return True


def put_back(held: Path, dest: Path, tmp: Path) -> bool:
    """Link ``held`` back to ``dest`` unless a listed file is there (newer, or the same bytes).

    Where a lookup still finds a name the listing lacks, a fresh copy of ``held`` (a temp in
    ``tmp``) is renamed onto it. True if it went back."""
    try:
        dest.parent.mkdir(exist_ok=True)
    except OSError:
        return False
    if listed(dest):
        return False
    try:
        os.link(held, dest, follow_symlinks=False)
        return True
    except FileExistsError:
        if listed(dest):
            return False  # made meanwhile
    except PermissionError:  # another user's file (fs.protected_hardlinks): moved back instead
        try:
            os.rename(held, dest)
        except OSError:
            return False
        return not os.path.lexists(held)  # a rename onto a lying name of the same file does nothing
    except OSError:
        return False
    temp = tmp / unique_name("back")
    try:
        shutil.copyfile(held, temp, follow_symlinks=False)
        os.chmod(temp, os.lstat(held).st_mode & 0o7777)
        os.rename(temp, dest)
    except OSError:
        return False
    finally:
        remove_quietly(temp)
    return True
