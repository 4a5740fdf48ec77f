"""Crash-safe file-system primitives: unique temp names, atomic publish, stale-temp cleanup.

Only operations that stay atomic on NFS and Lustre are used: create in a private temp
location, then ``rename``/``link`` into place. No flock, no SQLite.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from cachemgr.errors import NoSpaceError, StoreError
from cachemgr.store import faults
from cachemgr.store.perms import DENIED, FILE, READ_ONLY, permission_error
from cachemgr.store.usage import host_tag


def unique_name(kind: str) -> str:
    """``kind.host.pid.uuid``: unique across hosts; tells a later run who owned it."""
    return f"{kind}.{host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:16]}"


def owner_of(name: str) -> tuple[str, int] | None:
    """(host, pid) encoded by ``unique_name``, or None if ``name`` is not one."""
    parts = name.split(".")
    if len(parts) < 4 or not parts[-2].isdigit():
        return None
    return parts[-3], int(parts[-2])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_error(exc: OSError, what: Path | str) -> StoreError:
    """A one-line StoreError for an OS error while writing ``what`` (the one place ENOSPC is named).

    A full disk or quota (ENOSPC, EDQUOT) is a ``NoSpaceError`` (exit 10, HTTP 507); the CLI's
    mapping of an unexpected OSError (``cli/util.os_error``) comes through here for those too.
    """
    if exc.errno in NO_SPACE:
        full = "disk quota exceeded (no space for this user)" if exc.errno == errno.EDQUOT else (
            "no space left on device")
        return NoSpaceError(
            f"{full} while writing {what}; free space (e.g. cachemgr prune) "
            "or move CACHEMGR_HOME to a larger disk"
        )
    if exc.errno in DENIED:
        return permission_error(exc, what)
    if exc.errno == errno.EROFS:
        return StoreError(f"cannot write {what}: {exc.strerror}; check permissions of CACHEMGR_HOME")
    return StoreError(f"cannot write {what}: {exc.strerror or exc}")


def atomic_write(path: Path, data: bytes, tmp_dir: Path, mode: int = FILE, *,
                 fault: faults.Fault | None = None) -> None:
    """Write ``data`` to a unique temp file in ``tmp_dir``, fsync, and rename over ``path``.

    ``fault``: the crash tests' hook (faults.py; ``store.fault``), None but under ``fault_at``.
    """
    tmp = tmp_dir / unique_name("w")
    write_fault = faults.check(fault, "write")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            if write_fault is not None:
                os.write(fd, data[: len(data) // 2])
                write_fault.fire(tmp)
            os.write(fd, data)
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask (perms.py)
            os.fsync(fd)
        finally:
            os.close(fd)
        if (fired := faults.check(fault, "rename")) is not None:
            fired.fire(path)
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise disk_error(exc, path) from None


def open_no_follow(root: Path, path: Path) -> int:
    """Open ``path`` (below ``root``) for reading, following no symlink below ``root``; a regular file only.

    Each directory on the way is opened relative to the last with O_NOFOLLOW, so a link planted
    anywhere below ``root`` (by another host writing a shared store, say) is refused with ELOOP,
    not followed out of the store. Returns the descriptor; the caller closes it.
    """
    parts = path.relative_to(root).parts
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def atomic_symlink(target: str, path: Path, tmp_dir: Path, *, fault: faults.Fault | None = None) -> None:
    """Point ``path`` at ``target`` atomically (replacing an older link); ``fault`` as for atomic_write."""
    tmp = tmp_dir / unique_name("l")
    try:
        os.symlink(target, tmp)
        if (fired := faults.check(fault, "rename")) is not None:
            fired.fire(path)
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise disk_error(exc, path) from None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst``; copy when the file systems differ or links are refused."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)
        os.chmod(dst, READ_ONLY)


def remove_quietly(path: Path) -> None:
    """Remove a file, link or tree; missing is fine. Read-only trees are made writable first."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
    except FileNotFoundError:
        return
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o755)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def clean_stale_temps(tmp_dir: Path, grace: float, now: float | None = None) -> list[Path]:
    """Remove temps whose owner is a dead process on this host, or older than ``grace``."""
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        owner = owner_of(entry.name)
        dead = owner is not None and owner[0] == host_tag() and not pid_alive(owner[1])
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > grace
        except FileNotFoundError:
            continue
        if dead or old:
            remove_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed
