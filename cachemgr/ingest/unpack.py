"""Safe ingest: a tar stream (or a SavedModel directory) into the store, in one pass.

Every member is checked (no absolute paths, ``..``, links, devices or fifos), counted
against the size and entry caps, hashed with sha256 while it is written into a private
staging tree, and only after the whole archive checks out is it published:
blobs (dedup), manifest, then the snapshot by one atomic rename. Any failure removes
the staging tree and leaves the store as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from cachemgr.errors import (
    ArchiveLimitError,
    CorruptArchiveError,
    StoreError,
    UnsafeArchiveError,
)
from cachemgr.ingest.decompress import Compression, Readable, open_decompressed
from cachemgr.ingest.tarheaders import guarded_tarinfo
from cachemgr.store.fs import disk_error, remove_quietly, unique_name
from cachemgr.store.manifest import FileEntry, Limits, Manifest, check_manifest
from cachemgr.store.objects import Store
from cachemgr.store.perms import make_dir, make_dirs

T = TypeVar("T")
CHUNK = 256 * 1024  # small enough to stay in cache; 1 MiB chunks measured ~40% slower


@dataclass(frozen=True)
class IngestResult:
    manifest: Manifest
    digest: str
    snapshot: Path
    compression: Compression | None
    new_blobs: int
    new_bytes: int


def member_path(name: str, archive: str) -> str:
    """The safe relative path of a tar member name; UnsafeArchiveError if it escapes."""
    if "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an illegal character; refused")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is an absolute path; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the archive; refused")
    return "/".join(parts)


class TreeBuilder:
    """Writes one model's files into a private staging tree, then publishes them."""

    def __init__(self, store: Store, limits: Limits, name: str) -> None:
        self.store = store
        self.limits = limits
        self.name = name
        self.staging = store.new_temp("ingest")
        self.tree = self.staging / "tree"
        make_dir(self.tree, store.modes.dir)  # the store's modes: any member of its group may collect it
        self.files: dict[str, FileEntry] = {}
        self.dirs: set[str] = set()
        self.made: set[str] = set()  # every directory in the tree, explicit or a parent made on the way
        self.total = 0
        self.entries = 0

    def _count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveLimitError(
                f"{self.name}: more than {self.limits.max_entries} entries; refused as a possible "
                "archive bomb (raise max_entries / CACHEMGR_MAX_ENTRIES if it is genuine)"
            )

    def _count_parents(self, path: str) -> None:
        """Each directory an entry makes on its way is an entry too: 'a/' * 2000 + 'f' is 2001 of them."""
        parent = path
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in self.made:
                break  # so are all of its parents
            self.made.add(parent)
            self._count_entry()

    def _target(self, path: str) -> Path:
        if path in self.files or path in self.dirs:
            raise UnsafeArchiveError(f"{self.name}: duplicate entry {path!r}; refused")
        return self.tree / path

    def add_dir(self, path: str) -> None:
        self._count_entry()
        if not path or path in self.dirs:
            return
        target = self._target(path)
        self._count_parents(path)
        try:
            make_dirs(target, self.store.modes.dir)
        except (FileExistsError, NotADirectoryError):
            raise UnsafeArchiveError(f"{self.name}: {path!r} is both a file and a directory") from None
        except OSError as exc:
            raise self._os_error(exc, path) from None
        self.dirs.add(path)
        self.made.add(path)

    def _os_error(self, exc: OSError, path: str) -> UnsafeArchiveError | StoreError:
        """A name the file system cannot hold is the archive's fault; anything else the disk's."""
        if exc.errno == errno.ENAMETOOLONG:
            return UnsafeArchiveError(f"{self.name}: member name {path[:80]!r}... is too long for the file "
                                      "system; refused")
        return disk_error(exc, self.store.tmp)

    def add_file(self, path: str, mode: int, source: Readable) -> None:
        self._count_entry()
        if not path:
            raise UnsafeArchiveError(f"{self.name}: a file entry has an empty name; refused")
        target = self._target(path)
        self._count_parents(path)
        try:
            make_dirs(target.parent, self.store.modes.dir)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise UnsafeArchiveError(f"{self.name}: {path!r} collides with another entry") from None
        except OSError as exc:
            raise self._os_error(exc, path) from None
        digest = hashlib.sha256()
        size = 0
        try:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                self.total += len(chunk)
                if self.total > self.limits.max_bytes:
                    raise ArchiveLimitError(
                        f"{self.name}: unpacks to more than {self.limits.max_bytes} bytes; refused "
                        "as a possible archive bomb (raise max_model_size / "
                        "CACHEMGR_MAX_MODEL_SIZE if it is genuine)"
                    )
                digest.update(chunk)
                os.write(fd, chunk)
            os.fchmod(fd, 0o444)
        except OSError as exc:
            raise disk_error(exc, self.store.tmp) from None
        finally:
            os.close(fd)
        self.files[path] = FileEntry(path, mode & 0o777 or 0o644, size, digest.hexdigest())

    def publish(self, compression: Compression | None) -> IngestResult:
        manifest = Manifest.build(list(self.files.values()), self.dirs)
        check_manifest(manifest, self.name)
        new_blobs = new_bytes = 0
        try:
            for entry in manifest.files:
                if self.store.adopt_blob(self.tree / entry.path, entry.sha256):  # counted by who created it
                    new_blobs += 1
                    new_bytes += entry.size
            digest = self.store.write_manifest(manifest)
            _set_aside_if_partial(self.store, manifest, digest)
            snapshot = self.store.publish_snapshot(self.tree, digest)
        except OSError as exc:
            raise disk_error(exc, self.store.home) from None
        return IngestResult(manifest, digest, snapshot, compression, new_blobs, new_bytes)

    def cleanup(self) -> None:
        remove_quietly(self.staging)


def _set_aside_if_partial(store: Store, manifest: Manifest, digest: str) -> None:
    """An existing ``snapshots/<digest>`` missing a file (or with one of the wrong size) is no snapshot.

    ``publish_snapshot`` keeps an existing one; one left incomplete (say, by a process killed
    while deleting it) is renamed into tmp and removed, so that ours is published instead.
    """
    dest = store.snapshot_path(digest)
    if not dest.is_dir():
        return
    for f in manifest.files:
        try:
            if os.lstat(dest / f.path).st_size == f.size:
                continue
        except FileNotFoundError:
            pass
        aside = store.tmp / unique_name("partial")
        try:
            os.rename(dest, aside)
        except FileNotFoundError:
            return
        remove_quietly(aside)
        return


def ingest_stream(store: Store, source: Readable, name: str, limits: Limits) -> IngestResult:
    """Ingest a (compressed or plain) tar stream. Publishes nothing on any failure."""
    builder = TreeBuilder(store, limits, name)
    stream: BinaryIO | None = None
    try:
        stream, compression = open_decompressed(source, name)
        try:
            tarinfo = guarded_tarinfo(name)  # extended headers capped before tarfile reads them
            with _read_header(name, lambda: tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK,
                                                         tarinfo=tarinfo)) as tar:
                while (member := _read_header(name, tar.next)) is not None:
                    _add_member(builder, tar, member)
            _drain(stream, builder)
        except tarfile.ReadError as exc:
            text = str(exc)
            what = "is truncated" if "unexpected end" in text or "end of" in text else "is corrupt"
            raise CorruptArchiveError(f"{name}: tar data {what} ({text}); fetch it again") from None
        except tarfile.HeaderError as exc:
            raise CorruptArchiveError(f"{name}: bad tar header ({exc})") from None
        return builder.publish(compression)
    finally:
        if stream is not None:
            stream.close()
        builder.cleanup()


def _read_header(name: str, read: Callable[[], T]) -> T:
    """``read()`` (which parses tar headers), with tarfile's ValueErrors as CorruptArchiveError.

    tarfile trusts some PAX fields: ``GNU.sparse.size=''`` or ``GNU.sparse.map=x,y`` raise a
    bare ValueError from ``int()``, and ``GNU.sparse.major=1`` without a name an unpacking one.
    """
    try:
        return read()
    except ValueError as exc:
        raise CorruptArchiveError(f"{name}: bad tar header ({exc})") from None


def _drain(stream: BinaryIO, builder: TreeBuilder) -> None:
    """Read to the true end, so that trailers (gzip CRC, md5) are checked before publishing."""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        builder.total += len(chunk)
        if builder.total > builder.limits.max_bytes:
            raise ArchiveLimitError(f"{builder.name}: too much data after the end of the archive")


def _add_member(builder: TreeBuilder, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    name = builder.name
    path = member_path(member.name, name)
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        raise UnsafeArchiveError(
            f"{name}: member {member.name!r} is a {kind} (to {member.linkname!r}); refused"
        )
    if member.isdir():
        builder.add_dir(path)
    elif member.isreg():
        fileobj = tar.extractfile(member)
        assert fileobj is not None
        builder.add_file(path, member.mode, fileobj)
    else:
        kinds = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                 tarfile.FIFOTYPE: "fifo"}
        kind = kinds.get(member.type, f"special file (type {member.type!r})")
        raise UnsafeArchiveError(f"{name}: member {member.name!r} is a {kind}; refused")


def ingest_directory(store: Store, root: Path, name: str, limits: Limits) -> IngestResult:
    """Ingest a SavedModel directory from the local disk, with the same checks."""
    if not root.is_dir():
        raise StoreError(f"{root} is not a directory")
    builder = TreeBuilder(store, limits, name)
    try:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            for entry in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, entry)
                rel = entry if rel_dir == "." else f"{rel_dir}/{entry}"
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeArchiveError(f"{name}: {rel!r} is a symlink; refused")
                if stat.S_ISDIR(st.st_mode):
                    builder.add_dir(rel)
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as fh:
                        builder.add_file(rel, st.st_mode, fh)
                else:
                    raise UnsafeArchiveError(f"{name}: {rel!r} is not a regular file; refused")
        return builder.publish(None)
    finally:
        builder.cleanup()
