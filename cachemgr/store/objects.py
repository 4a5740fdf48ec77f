"""The content-addressed store on disk: its layout (every path is named here), and the objects.

Layout under HOME (``Store`` has an attribute or method for each)::

    store-format                  format version of this tree
    blobs/sha256/ab/<sha256>      file contents, read-only, named by their sha256
    manifests/sha256/<digest>.json
    snapshots/<digest>/           a model version's tree, hard links into blobs/
    refs/<key>.json               handle -> manifest + provenance (refs.py)
    aliases/<key>                 any alias string -> its ref's handle (refs.py)
    view/<sha1(alias)>            link ../snapshots/<digest>: what TFHUB_CACHE_DIR points at (view.py)
    pins/<key>.json               pin records, GC roots (pins.py)
    uses/<sha1(alias)>.<host>     last use per host, as mtimes (usage.py)
    quarantine/                   corrupt content moved aside (quarantine.py)
    scrub-state.json              progress of a resumable scrub (lifecycle/scrub_state.py)
    tmp/                          private temps: kind.host.pid.uuid

Modes (perms.py): a store whose home is setgid is shared by its group (directories 2775),
else private (0755); files are 0644 or 0444 whatever the umask.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cachemgr.errors import NoStoreError, StoreError, UnsafeManifestError
from cachemgr.settings import Settings
from cachemgr.store.faults import Fault
from cachemgr.store.fs import atomic_write, clean_stale_temps, disk_error, link_or_copy, remove_quietly, unique_name
from cachemgr.store.manifest import Manifest, check_manifest
from cachemgr.store.perms import (
    READ_ONLY,
    Modes,
    check_not_world_writable,
    check_writable,
    make_dir,
    make_dirs,
    make_home,
    modes_of,
)
from cachemgr.store.usage import hub_key, uses_dir

STORE_FORMAT = 1
VIEW_NOTE = ".cachemgr-store"  # in a view outside the store: the store's home, one line
# Every directory a writer may need, made up front with the store's modes (nodes/ and leases/ are cluster/'s).
_SUBDIRS = ("blobs/sha256", "manifests/sha256", "snapshots", "refs", "aliases", "view", "tmp", "pins", "uses",
            "quarantine", "nodes", "leases")


class Store:
    """Paths and primitive operations of one store. Cheap to construct."""

    def __init__(self, home: Path, view: Path | None = None) -> None:
        self.home = home
        self.blobs = home / "blobs" / "sha256"
        self.manifests = home / "manifests" / "sha256"
        self.snapshots = home / "snapshots"
        self.refs = home / "refs"
        self.aliases = home / "aliases"
        # The view is the store's own view/ (relative links), or a directory of its own (``view``
        # setting: a node-local view on each node, or one on another filesystem) whose links are
        # absolute paths into the store: the store must then be at one path on every node.
        self.view = view or home / "view"
        self.view_elsewhere = view is not None and view != home / "view"
        self.tmp = home / "tmp"
        self.pins = home / "pins"
        self.uses = uses_dir(home)
        self.quarantine = home / "quarantine"
        self.scrub_state = home / "scrub-state.json"
        self._modes: Modes | None = None
        # The crash tests' hook (faults.py), handed to every atomic write of this store; None but
        # under ``fault_at`` (the CLI sets it once a command's store is open and recovered).
        self.fault: Fault | None = None

    @property
    def modes(self) -> Modes:
        """The mode policy of this store (shared by a group or private; perms.py), read once."""
        if self._modes is None:
            self._modes = modes_of(self.home)
        return self._modes

    def layout_dirs(self) -> list[Path]:
        """HOME and the fixed directories of the layout (what the permission checks look at)."""
        own_view = [self.view] if self.view_elsewhere else []
        return [self.home, *(self.home / sub for sub in _SUBDIRS), self.home / "blobs", self.home / "manifests",
                *own_view]

    def check_permissions(self, *, writing: bool) -> None:
        """Refuse a world-writable store directory; for a writer, one this user may not write."""
        for d in self.layout_dirs():
            check_not_world_writable(d)
        if writing:
            check_writable(self.home, self.layout_dirs())

    def view_entry(self, alias: str) -> Path:
        """The view entry tensorflow_hub resolves for ``alias``: ``view/<sha1(alias)>``."""
        return self.view / hub_key(alias)

    def view_target(self, digest: str) -> str:
        """What a view entry links to: relative, so the tree works wherever it is mounted; absolute
        when the view is elsewhere."""
        if self.view_elsewhere:
            return str(self.snapshots / digest)
        return os.path.join("..", "snapshots", digest)

    # -- opening -----------------------------------------------------------------------
    def format_file(self) -> Path:
        return self.home / "store-format"

    def exists(self) -> bool:
        return self.format_file().is_file()

    def check_format(self) -> None:
        try:
            doc = json.loads(self.format_file().read_text())
            version = int(doc["format"])
        except FileNotFoundError:
            raise NoStoreError(
                f"{self.home} is not a cachemgr store; check --home / CACHEMGR_HOME, or fill it first with "
                "`cachemgr pull` or `cachemgr import`"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{self.format_file()} is corrupt; restore it or run cachemgr verify") from None
        if version > STORE_FORMAT:
            raise StoreError(
                f"store {self.home} has format {version}, newer than this cachemgr "
                f"understands ({STORE_FORMAT}); upgrade cachemgr"
            )

    def create(self) -> None:
        """Make the layout (idempotent, safe to race with other hosts and users).

        What this call makes gets the store's modes; what exists is left as it is (it may be
        another user's). A world-writable store directory, or one this user may not write,
        is refused (StorePermissionError) before anything is written.
        """
        check_not_world_writable(self.home)
        try:
            make_home(self.home)
            self._modes = modes_of(self.home)
            self.check_permissions(writing=True)
            for sub in _SUBDIRS:
                make_dirs(self.home / sub, self.modes.dir)
        except OSError as exc:
            raise disk_error(exc, self.home) from None
        self.check_permissions(writing=True)
        if self.view_elsewhere:
            self._make_view()
        if not self.format_file().exists():
            body = json.dumps({"format": STORE_FORMAT, "kind": "cachemgr-store"}) + "\n"
            atomic_write(self.format_file(), body.encode(), self.tmp, fault=self.fault)
        self.check_format()

    def _make_view(self) -> None:
        """A view of its own, with a note that names the store (the shim records uses through it)."""
        try:
            make_dirs(self.view, self.modes.dir)
            note = self.view / VIEW_NOTE
            if not note.exists():
                atomic_write(note, (str(self.home) + "\n").encode(), self.tmp, fault=self.fault)
        except OSError as exc:
            raise disk_error(exc, self.view) from None

    def new_temp(self, kind: str) -> Path:
        path = self.tmp / unique_name(kind)
        make_dir(path, self.modes.dir)
        return path

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Mark a pull, add or import as running: prune keeps what it writes (a live temp is the mark)."""
        marker = self.new_temp("inflight")
        try:
            yield
        finally:
            remove_quietly(marker)

    # -- blobs -------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def adopt_blob(self, staged: Path, digest: str) -> bool:
        """Make the staged, already-hashed file ``staged`` the blob ``digest``, deduplicating.

        Afterwards ``staged`` is a hard link to the blob (shared storage). Safe against a
        concurrent prune removing the blob: then ``staged`` itself becomes the blob. Returns
        whether this call created the blob (of concurrent adopters of one digest, one does).
        """
        blob = self.blob_path(digest)
        if blob.exists() and self._link_existing(blob, staged):
            return False
        make_dir(blob.parent, self.modes.dir)
        os.chmod(staged, READ_ONLY)  # whoever staged it, under whatever umask: readable by all, by nobody writable
        try:
            os.link(staged, blob)
        except FileExistsError:
            if self._link_existing(blob, staged):
                return False
            os.link(staged, blob)
        except OSError:
            # blobs/ on another file system, or no hard links: copy beside the blob, rename in.
            tmp = blob.parent / f".{unique_name('b')}"
            try:
                link_or_copy(staged, tmp)
                os.replace(tmp, blob)
            finally:
                if tmp.exists():
                    tmp.unlink()
        return True

    def _link_existing(self, blob: Path, staged: Path) -> bool:
        """Replace ``staged`` by a link to the existing ``blob``; False if the blob vanished."""
        tmp = staged.with_name(unique_name(".adopt"))
        try:
            link_or_copy(blob, tmp)
        except FileNotFoundError:
            return False
        os.replace(tmp, staged)
        return True

    def iter_blobs(self) -> Iterator[str]:
        for sub in sorted(self.blobs.iterdir()) if self.blobs.is_dir() else []:
            yield from sorted(os.listdir(sub))

    def blob_names(self) -> set[str]:
        """Every blob's digest, from one listing per fan-out folder (never a stat per blob)."""
        names: set[str] = set()
        try:
            subs = os.listdir(self.blobs)
        except FileNotFoundError:
            return names
        for sub in subs:
            try:
                names.update(os.listdir(self.blobs / sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return names

    # -- manifests ---------------------------------------------------------------------
    def manifest_path(self, digest: str) -> Path:
        return self.manifests / f"{digest}.json"

    def write_manifest(self, manifest: Manifest) -> str:
        digest = manifest.digest
        path = self.manifest_path(digest)
        try:
            os.utime(path)  # mark it as just written, so that a concurrent prune keeps it
        except FileNotFoundError:
            atomic_write(path, manifest.to_bytes(), self.tmp, mode=0o444, fault=self.fault)
        except OSError:
            pass  # another user's file: it exists, which is what matters
        return digest

    def read_manifest(self, digest: str) -> Manifest:
        path = self.manifest_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"manifest {digest} is missing from {self.manifests}; "
                             "run cachemgr verify --repair") from None
        return Manifest.from_bytes(data, str(path))

    # -- snapshots ---------------------------------------------------------------------
    def snapshot_path(self, digest: str) -> Path:
        return self.snapshots / digest

    def publish_snapshot(self, tree: Path, digest: str) -> Path:
        """Rename the finished ``tree`` to ``snapshots/<digest>``; an existing one wins.

        The tree's directories get the store's mode first, whoever made them under whatever
        umask: a group member must be able to prune the snapshot (rename and empty it).
        """
        dest = self.snapshot_path(digest)
        if not dest.is_dir():
            for root, _dirs, _files in os.walk(tree):
                os.chmod(root, self.modes.dir)
        for _attempt in range(3):
            if dest.is_dir():
                try:
                    os.utime(dest)  # in use again: a concurrent prune skips what changed after its scan
                except FileNotFoundError:
                    continue  # pruned this very moment: publish ours instead
                except OSError:
                    pass  # another user's snapshot
                remove_quietly(tree)
                return dest
            try:
                os.rename(tree, dest)
                return dest
            except OSError:
                if not dest.is_dir():
                    raise
        remove_quietly(tree)
        return dest

    def materialize(self, manifest: Manifest) -> Path:
        """Build ``snapshots/<digest>`` from blobs (used by upstream fetches, import and repair).

        Whatever the caller checked, the manifest is checked again here, every path must
        resolve inside the staging tree, and every blob must have the size the manifest
        says: a hostile manifest cannot place a file outside the snapshot.
        """
        digest = manifest.digest
        dest = self.snapshot_path(digest)
        if dest.is_dir():
            try:
                os.utime(dest)  # in use again, as publish_snapshot marks it: a running prune skips it
                return dest     # (and so its blobs, which it keeps linked)
            except FileNotFoundError:
                pass  # a prune took it this very moment: build it again
            except OSError:
                return dest  # another user's snapshot: it exists, which is what matters
        check_manifest(manifest, f"manifest {digest}")
        staging = self.new_temp("snap")
        try:
            tree = staging / "tree"
            make_dir(tree, self.modes.dir)
            for d in sorted(manifest.dirs):  # parents first; the tree is ours, so no link can be in it
                if not make_dir(_inside(tree, d), self.modes.dir):
                    raise FileExistsError(errno.EEXIST, "listed twice", str(_inside(tree, d)))
            for f in manifest.files:
                blob = self.blob_path(f.sha256)
                size = blob.stat().st_size
                if size != f.size:
                    raise UnsafeManifestError(f"manifest {digest}: {f.path!r} is {f.size} bytes by the manifest, "
                                              f"but blob {f.sha256} is {size}; refused")
                link_or_copy(blob, _inside(tree, f.path))
            return self.publish_snapshot(tree, digest)
        finally:
            remove_quietly(staging)


def open_store(settings: Settings, *, create: bool = True, missing_ok: bool = False, clean: bool = True) -> Store:
    """The store at ``settings.home``, opened the one way every command and the daemon use.

    ``create``: made if needed (for what fills a store). Otherwise it must exist
    (NoStoreError), unless ``missing_ok``. An existing store's format is checked, and with
    ``clean`` the stale temps of dead runs are collected.
    """
    store = Store(settings.home, settings.view)
    if create:
        store.create()
    elif store.exists() or not missing_ok:
        store.check_format()  # a missing store raises NoStoreError with the fix
        store.check_permissions(writing=False)
    if clean and store.exists():
        clean_stale_temps(store.tmp, settings.temp_grace)
    return store


def _inside(tree: Path, rel: str) -> Path:
    """``tree / rel``, refusing anything that would resolve outside ``tree``."""
    target = Path(os.path.normpath(os.path.join(tree, rel)))
    if target == tree or tree not in target.parents:
        raise UnsafeManifestError(f"path {rel!r} resolves outside the snapshot; refused")
    return target
