"""``cachemgr verify``: prove that every byte in the store is what it claims to be.

Checks, in order: every blob's sha256 against its name (two hashing threads); per model, its
manifest (digest against name, parse, SavedModel structure), blob presence, the snapshot
against the manifest (same inode as the blob or identical content, read-only modes, nothing
missing or extra) and its view links; dangling view links; with ``deep``, a real
``tf.saved_model.load`` in a child process.

Nothing here changes the store (the resumable scrub's own progress file aside): the report
lists the problems and orders what must be quarantined and taken out of service, which
``contain.py`` carries out and ``repair.py`` puts back. ``scrub.py`` runs the three.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cachemgr.errors import CachemgrError
from cachemgr.lifecycle.deep_load import load_models
from cachemgr.lifecycle.hashing import Throttle, hash_many, sha256_file
from cachemgr.lifecycle.problems import Problem, ProblemKind, QuarantineOrder, Retirement, VerifyReport
from cachemgr.lifecycle.scrub_state import ScrubState, resume_or_start, save_state
from cachemgr.progress import Bar, Bars
from cachemgr.settings import Settings
from cachemgr.store.manifest import Manifest
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref, RefIndex, key_of
from cachemgr.store.savedmodel import check_structure


@dataclass(frozen=True)
class VerifyOptions:
    handles: tuple[str, ...] = ()
    deep: bool = False
    repair: bool = False
    bundle: Path | None = None
    max_duration: float | None = None
    rate: int | None = None  # bytes/s, for background scrubs
    workers: int | None = None
    bars: Bars | None = None  # progress bars on a TTY (blob hashing; --deep: models loaded)


class Verifier:
    def __init__(self, settings: Settings, store: Store, options: VerifyOptions) -> None:
        self.settings = settings
        self.store = store
        self.options = options
        self.report = VerifyReport()
        self.start = time.monotonic()
        self.did_work = False
        self._users: dict[str, set[str]] | None = None  # blob -> manifest digests, built on demand
        self.refs: list[Ref] = []
        self.by_manifest: dict[str, list[Ref]] = {}
        self.out_of_service: set[str] = set()  # manifest digests
        self.loadable: list[Ref] = []

    # -- bookkeeping ---------------------------------------------------------------
    def expired(self) -> bool:
        limit = self.options.max_duration
        return limit is not None and self.did_work and time.monotonic() - self.start >= limit

    def problem(self, kind: ProblemKind, subject: str, message: str, models: tuple[str, ...] = ()) -> None:
        self.report.problems.append(Problem(kind, subject, message, models))

    def users_of(self, sha: str) -> set[str]:
        if self._users is None:
            self._users = {}
            for digest in self.by_manifest:
                try:
                    for b in self.store.read_manifest(digest).blob_digests():
                        self._users.setdefault(b, set()).add(digest)
                except CachemgrError:
                    continue
        return self._users.get(sha, set())

    def handles_of(self, digests: set[str]) -> tuple[str, ...]:
        return tuple(sorted(r.handle for d in digests for r in self.by_manifest.get(d, [])))

    def retire(self, digest: str, reason: str) -> None:
        """Order every model with manifest ``digest`` out of service (once; ``contain`` carries it out)."""
        if digest in self.out_of_service:
            return
        self.out_of_service.add(digest)
        aliases = tuple(a for r in self.by_manifest.get(digest, []) for a in r.aliases)
        self.report.retirements.append(Retirement(digest, reason, aliases))

    # -- blobs ---------------------------------------------------------------------
    def blob_keys(self, after: str) -> Iterator[tuple[str, str]]:
        if self.options.handles:
            wanted: set[str] = set()
            for digest in self.by_manifest:
                try:
                    wanted |= self.store.read_manifest(digest).blob_digests()
                except CachemgrError:
                    continue
            names: Iterator[str] = iter(sorted(wanted))
        else:
            names = self.store.iter_blobs()
        for sha in names:
            if sha > after:
                yield sha, str(self.store.blob_path(sha))

    def check_blobs(self, state: ScrubState) -> ScrubState:
        throttle = Throttle(self.options.rate) if self.options.rate else None
        saved = time.monotonic()
        keys: Iterator[tuple[str, str]] = self.blob_keys(state.cursor)
        bar: Bar | None = None
        total = 0
        if self.options.bars is not None and self.options.bars.enabled:
            listed = list(keys)  # a stat per blob, only for the bar's total
            total = sum(_size(path) for _key, path in listed)
            keys, bar = iter(listed), self.options.bars.new("verify blobs")
        try:
            state = self._hash_blobs(state, keys, throttle, saved, bar, total)
        finally:
            if bar is not None:
                bar.close()
        return state

    def _hash_blobs(self, state: ScrubState, keys: Iterator[tuple[str, str]], throttle: Throttle | None,
                    saved: float, bar: Bar | None, total: int) -> ScrubState:
        done = 0
        for res in hash_many(keys, self.options.workers, self.expired, throttle):
            self.did_work = True
            if res.digest is None:
                if self.options.handles and res.error == "missing":
                    pass  # reported per model (blob_missing), with a repair path
                elif res.error != "missing":  # vanished: pruned meanwhile
                    self.problem(ProblemKind.BLOB_UNREADABLE, res.key, f"cannot read: {res.error}")
            elif res.digest != res.key:
                users = self.users_of(res.key)
                self.report.quarantines.append(QuarantineOrder("blob", res.key, f"sha256 is {res.digest}"))
                for digest in users:
                    self.retire(digest, f"blob {res.key} is corrupt")
                handles = self.handles_of(users)
                taken = f"{', '.join(handles)} taken out of service" if handles else "no model uses it"
                self.problem(ProblemKind.BLOB_CORRUPT, res.key,
                             f"content hashes to {res.digest[:16]}…; quarantined; {taken}", handles)
            self.report.blobs += 1
            self.report.bytes += res.size
            done += res.size
            if bar is not None:
                bar.update_to(done, max(total, done))
            state = state.advance(cursor=res.key, blobs_done=state.blobs_done + 1,
                                  bytes_done=state.bytes_done + res.size)
            if self.options.max_duration is not None and time.monotonic() - saved > 5:
                save_state(self.store, state)
                saved = time.monotonic()
        return state

    # -- models --------------------------------------------------------------------
    def check_model(self, ref: Ref) -> None:
        store, h = self.store, (ref.handle,)
        digest = ref.manifest
        if digest in self.out_of_service:
            return
        try:
            data = store.manifest_path(digest).read_bytes()
        except FileNotFoundError:
            self.problem(ProblemKind.MANIFEST_MISSING, digest, "the manifest of this model is missing", h)
            self.retire(digest, "manifest missing")
            return
        if hashlib.sha256(data).hexdigest() != digest:
            self.report.quarantines.append(QuarantineOrder("manifest", digest, "digest mismatch"))
            self.problem(ProblemKind.MANIFEST_CORRUPT, digest,
                         "manifest content does not match its name; quarantined", h)
            self.retire(digest, "manifest corrupt")
            return
        try:
            manifest = Manifest.from_bytes(data, str(store.manifest_path(digest)))
            check_structure([f.path for f in manifest.files], ref.handle)
        except CachemgrError as err:
            self.problem(ProblemKind.STRUCTURE, digest, str(err), h)
            self.retire(digest, "not a valid SavedModel")
            return
        for f in manifest.files:
            try:
                size = os.stat(store.blob_path(f.sha256)).st_size
            except FileNotFoundError:
                self.problem(ProblemKind.BLOB_MISSING, f.sha256, f"blob of {f.path} is missing from the store", h)
                continue
            if size != f.size:  # the blob is named by its hash, so it is the manifest that lies
                self.problem(ProblemKind.MANIFEST_CORRUPT, digest, f"{f.path} is {f.size} bytes by the manifest, "
                             f"but its blob {f.sha256[:16]}… is {size} bytes", h)
                self.retire(digest, "manifest gives a wrong size")
                return
        if not self.check_snapshot(ref, manifest):
            return
        self.check_view(ref)
        self.loadable.append(ref)

    def check_snapshot(self, ref: Ref, manifest: Manifest) -> bool:
        root = self.store.snapshot_path(ref.manifest)
        h = (ref.handle,)
        if not root.is_dir():
            self.problem(ProblemKind.SNAPSHOT_MISSING, ref.manifest, "the snapshot directory is missing", h)
            self.retire(ref.manifest, "snapshot missing")
            return False
        bad: list[tuple[ProblemKind, str]] = []
        writable: list[str] = []
        for f in manifest.files:
            path = root / f.path
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                bad.append((ProblemKind.SNAPSHOT_FILE_MISSING, f"{f.path} is missing"))
                continue
            if not stat.S_ISREG(st.st_mode):
                bad.append((ProblemKind.SNAPSHOT_FILE_DIFFERS, f"{f.path} is not a regular file"))
                continue
            try:
                blob = os.lstat(self.store.blob_path(f.sha256))
                same = (blob.st_dev, blob.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                same = False
            if not same and (st.st_size != f.size or sha256_file(str(path))[0] != f.sha256):
                bad.append((ProblemKind.SNAPSHOT_FILE_DIFFERS, f"{f.path} differs from its blob"))
            if st.st_mode & 0o222:
                writable.append(f.path)
        expected = set(manifest.dirs) | {f.path for f in manifest.files}
        extra = sorted(p for p in _walk(root) if p not in expected)
        if extra:
            more = f" and {len(extra) - 1} more" if extra[1:] else ""
            bad.append((ProblemKind.SNAPSHOT_EXTRA, f"unexpected {extra[0]}{more}"))
        for kind, message in bad:
            self.problem(kind, ref.manifest, message, h)
        if bad:
            self.retire(ref.manifest, bad[0][1])
            return False
        if writable:
            self.problem(ProblemKind.SNAPSHOT_MODE, ref.manifest,
                         f"{len(writable)} file(s) writable, e.g. {writable[0]}", h)
        return True

    def check_view(self, ref: Ref) -> None:
        target = self.store.view_target(ref.manifest)
        for alias in ref.aliases:
            entry = self.store.view_entry(alias)
            try:
                found = os.readlink(entry)
            except FileNotFoundError:
                self.problem(ProblemKind.VIEW_MISSING, alias, f"no view link for {alias}", (ref.handle,))
                continue
            except OSError:
                continue  # a real directory that plain tensorflow_hub downloaded: not ours
            if found != target and self._owner(alias) in (None, ref.handle):
                self.problem(ProblemKind.VIEW_WRONG, alias, f"view link for {alias} points at {found}", (ref.handle,))

    def _owner(self, alias: str) -> str | None:
        try:
            return (self.store.aliases / key_of(alias)).read_text()
        except OSError:
            return None

    def check_dangling(self) -> None:
        try:
            entries = list(os.scandir(self.store.view))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_symlink() and not os.path.exists(entry.path):
                self.problem(ProblemKind.VIEW_DANGLING, entry.name,
                             f"view link points at missing {os.readlink(entry.path)}")

    def check_deep(self) -> None:
        refs = [r for r in self.loadable if r.manifest not in self.out_of_service]
        paths = sorted({self.store.snapshot_path(r.manifest) for r in refs})
        bar = self.options.bars.new("verify --deep", unit="model") if self.options.bars else None
        try:
            results = load_models(paths, on_result=(lambda n: bar.update_to(n, len(paths))) if bar else None)
        finally:
            if bar is not None:
                bar.close()
        for ref in refs:
            res = results.get(str(self.store.snapshot_path(ref.manifest)))
            if res is None:
                continue
            if res.ok:
                self.report.signatures[ref.handle] = list(res.signatures)
            else:
                self.problem(ProblemKind.LOAD_FAILED, ref.handle,
                             "tf.saved_model.load fails although every hash matches (the archive itself is "
                             f"broken; pin another version): {res.error}", (ref.handle,))


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _walk(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            yield name if rel == "." else f"{rel}/{name}"


def check_store(settings: Settings, store: Store, options: VerifyOptions) -> Verifier:
    """Verify the store or the models named in ``options``; the Verifier holds the report and refs.

    Repair is not done here: ``cachemgr.lifecycle.scrub.run_verify`` acts on the findings.
    """
    if options.bundle is not None and not options.bundle.is_file():
        raise CachemgrError(f"--from-bundle {options.bundle}: no such file; give the bundle (.tar.zst) to repair from")
    v = Verifier(settings, store, options)
    index = RefIndex(store)
    v.refs = [index.require(t) for t in options.handles] if options.handles else index.all()
    for ref in v.refs:
        v.by_manifest.setdefault(ref.manifest, []).append(ref)
    resumable = not options.handles and options.max_duration is not None
    state = resume_or_start(store, time.time()) if resumable else ScrubState(pass_started=time.time())
    if state.phase == "blobs":
        state = v.check_blobs(state)
        if not v.expired():
            state = state.advance(phase="models", cursor="")
    if state.phase == "models":
        for ref in sorted(v.refs, key=lambda r: r.handle):
            if ref.handle <= state.cursor and resumable:
                continue
            if v.expired():
                break
            v.did_work = True
            v.check_model(ref)
            v.report.models += 1
            state = state.advance(cursor=ref.handle, models_done=state.models_done + 1)
        else:
            if not options.handles:
                v.check_dangling()
            state = state.advance(phase="done", cursor="", last_complete=time.time())
    if options.deep:
        v.check_deep()
    v.report.partial = state.phase != "done"
    v.report.state = state
    if not options.handles:
        save_state(store, state)
    return v
