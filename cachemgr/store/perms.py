"""The store's mode policy, in one place: who may read and write what, whatever the umask.

A store is *private* or *group-shared*, and its home directory says which: a home with the
setgid bit (``chgrp G HOME; chmod 2775 HOME``, or a home made inside a setgid group
directory, which Linux passes the bit on to) is shared by the users of its group.

- Directories: 0755 private, 2775 shared (setgid, so that everything below keeps the
  store's group; group-writable, so that any member can add, rename and remove entries).
- Files are replaced by rename, never rewritten in place, so they need no group write:
  records (refs, aliases, pins, scrub state, leases, store-format) 0644, content (blobs,
  manifests) 0444. Both are group- and world-readable whatever the caller's umask.

The umask is never changed (it is process-wide): a directory is made with ``mkdir`` and then
given its mode with ``chmod`` (this process made it, so it owns it); files get theirs with
``fchmod`` where they are written. Nothing here changes the mode of a directory it did not make.

The checks: a world-writable store directory is refused, sticky bit or not (a sticky
directory still lets anyone plant a name that is not there yet, such as the view entry of a
model not yet cached, which tensorflow_hub would then load); a writer that may not write the
store gets one line saying whose it is and how to share it (``StorePermissionError``).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from cachemgr.errors import StorePermissionError

DIR_PRIVATE = 0o755
DIR_SHARED = 0o2775
FILE = 0o644
READ_ONLY = 0o444
DENIED = frozenset({errno.EACCES, errno.EPERM})


@dataclass(frozen=True)
class Modes:
    """The modes of one store's directories (files are the same in both kinds of store)."""

    shared: bool

    @property
    def dir(self) -> int:
        return DIR_SHARED if self.shared else DIR_PRIVATE


def modes_of(home: Path) -> Modes:
    """The policy of the store at ``home``: shared when its home directory is setgid."""
    try:
        return Modes(bool(os.stat(home).st_mode & stat.S_ISGID))
    except OSError:
        return Modes(False)


def make_dir(path: Path, mode: int) -> bool:
    """``mkdir`` with exactly ``mode`` (umask-proof); False if something is already there."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)
    return True


def make_dirs(path: Path, mode: int) -> None:
    """``make_dir`` with missing parents (each made with ``mode``); FileExistsError if ``path`` is a file."""
    try:
        made = make_dir(path, mode)
    except FileNotFoundError:
        make_dirs(path.parent, mode)
        made = make_dir(path, mode)
    if not made and not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))


def make_home(home: Path) -> None:
    """Make the store's home (and missing parents, which keep the caller's umask).

    A home made inside a setgid directory inherits the bit: the store is then shared
    (2775), else private (0755). An existing home is left as it is.
    """
    if home.is_dir():
        return
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(home, DIR_PRIVATE)
    except FileExistsError:
        return
    os.chmod(home, DIR_SHARED if os.stat(home).st_mode & stat.S_ISGID else DIR_PRIVATE)


def _name(lookup: str, ident: int) -> str:
    try:
        return pwd.getpwuid(ident).pw_name if lookup == "user" else grp.getgrgid(ident).gr_name
    except KeyError:
        return str(ident)


def check_not_world_writable(path: Path) -> None:
    """Refuse a store directory anyone may write: anyone could swap (or plant) a link in it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if mode & stat.S_IWOTH:
        raise StorePermissionError(
            f"store directory {path} is world-writable (mode {stat.S_IMODE(mode):04o}): anyone could swap "
            f"a link in it, so it is refused; fix it with: chmod o-w {path}"
        )


def not_writable(home: Path, path: Path) -> StorePermissionError:
    """The one-line error for a store (or a directory in it, ``path``) this user may not write."""
    try:
        st = os.stat(path)
    except OSError:
        return StorePermissionError(f"store {home}: cannot write {path}; check its owner, group and mode, "
                                    "or use --home")
    owner, group = _name("user", st.st_uid), _name("group", st.st_gid)
    what = f"store {home} is" if path == home else f"store {home}: {path} is"
    if st.st_mode & stat.S_IWGRP and st.st_gid not in (os.getgid(), *os.getgroups()):
        fix = f"ask to be added to group {group}"
    else:  # no g+w on files: content stays read-only (verify checks it); directories get g+ws
        group = group if st.st_mode & stat.S_ISGID else "GROUP"  # not shared yet: its group may be the owner's own
        fix = (f"ask for group access (chgrp -R {group} {home}; chmod -R g+rX {home}; "
               f"find {home} -type d -exec chmod g+ws {{}} +)")
    return StorePermissionError(f"{what} owned by {owner} and not writable by you: {fix} or use --home")


def check_writable(home: Path, dirs: list[Path]) -> None:
    """Raise ``not_writable`` for the first of ``dirs`` (directories of the store) this user may not write."""
    for d in dirs:
        if d.is_dir() and not os.access(d, os.W_OK | os.X_OK):
            raise not_writable(home, d)


def store_home_of(path: Path) -> Path | None:
    """The store that ``path`` is in (the nearest directory on its way up holding ``store-format``)."""
    for d in (path, *path.parents):
        try:
            if (d / "store-format").is_file():
                return d
        except OSError:
            return None
    return None


def _blocked(home: Path, path: Path) -> Path | None:
    """The directory on the way from ``path`` up to ``home`` that this user may not write, if any."""
    below = (path, *path.parents)
    for d in below[:below.index(home) + 1]:
        if d.is_dir() and not os.access(d, os.W_OK | os.X_OK):
            return d
    return None


def permission_error(exc: OSError, what: Path | str) -> StorePermissionError:
    """EACCES/EPERM while working on ``what``, as one line naming whose it is and the fix."""
    paths = [Path(p) for p in (exc.filename2, exc.filename) if p] or [Path(what)]
    for path in paths:
        home = store_home_of(path)
        blocked = None if home is None else _blocked(home, path)
        if home is not None and blocked is not None:
            return StorePermissionError(f"{not_writable(home, blocked)} ({exc.strerror}: {path})")
    path = paths[-1]
    home = store_home_of(path)
    if home is not None:
        return StorePermissionError(f"{not_writable(home, path)} ({exc.strerror}: {path})")
    try:
        st = os.stat(path if path.exists() else path.parent)
        whose = (f" (owned by {_name('user', st.st_uid)}, group {_name('group', st.st_gid)}, "
                 f"mode {stat.S_IMODE(st.st_mode):04o})")
    except OSError:
        whose = ""
    return StorePermissionError(f"{path}: {exc.strerror}{whose}; check that this user may read and write it")
