"""``cachemgr verify``: prove that every byte in the store is what it claims to be.

Checks, in order: every blob's sha256 against its name (two hashing threads); per model, its
manifest (digest against name, parse, SavedModel structure), blob presence, the snapshot
against the manifest (same inode as the blob or identical content, read-only modes, nothing
missing or extra) and its view links; dangling view links; with ``deep``, a real
``tf.saved_model.load`` in a child process. Corrupt content is quarantined at once and the
models that use it are taken out of service (repair.py puts them back).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cachemgr.errors import CachemgrError
from cachemgr.lifecycle.deep_load import load_models
from cachemgr.lifecycle.hashing import Throttle, hash_many, sha256_file
from cachemgr.lifecycle.scrub_state import ScrubState, resume_or_start, save_state
from cachemgr.settings import Settings
from cachemgr.store.manifest import Manifest
from cachemgr.store.objects import Store
from cachemgr.store.quarantine import quarantine, take_out_of_service
from cachemgr.store.refs import Ref, RefIndex, key_of
from cachemgr.store.savedmodel import check_structure
from cachemgr.store.view import hub_key

# Problems that leave a model unservable (its snapshot is quarantined, its view links removed).
OUT_OF_SERVICE = {"blob_corrupt", "manifest_corrupt", "manifest_missing", "snapshot_missing",
                  "snapshot_file_missing", "snapshot_file_differs", "snapshot_extra", "structure"}


@dataclass(frozen=True)
class VerifyOptions:
    handles: tuple[str, ...] = ()
    deep: bool = False
    repair: bool = False
    bundle: Path | None = None
    max_duration: float | None = None
    rate: int | None = None  # bytes/s, for background scrubs
    workers: int | None = None


@dataclass
class Problem:
    kind: str
    subject: str
    message: str
    models: tuple[str, ...] = ()
    repaired: bool = False
    action: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message, "models": list(self.models),
                "repaired": self.repaired, "action": self.action}


@dataclass(frozen=True)
class Outcome:
    """A verify run's result: ``code`` names it (``--json``), ``exit_code`` is the documented exit status."""

    code: Literal["ok", "corruption_found", "corruption_repaired"]
    message: str

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "corruption_found": 11, "corruption_repaired": 12}[self.code]


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    models: int = 0
    signatures: dict[str, list[str]] = field(default_factory=dict)
    partial: bool = False
    state: ScrubState | None = None
    seconds: float = 0.0
    repair_errors: list[str] = field(default_factory=list)

    def outcome(self) -> Outcome:
        """What the run found, as a value: ``ok``, ``corruption_repaired`` or ``corruption_found``."""
        if not self.problems:
            return Outcome("ok", "")
        left = [p for p in self.problems if not p.repaired]
        if not left:
            return Outcome("corruption_repaired", f"{len(self.problems)} problem(s) found and all repaired")
        hint = ("see the errors above" if self.repair_errors else
                "run `cachemgr verify --repair` to re-fetch or rebuild what is damaged")
        return Outcome("corruption_found", f"{len(self.problems)} problem(s) found, {len(left)} not repaired; {hint}")

    def lines(self) -> list[str]:
        out = [f"{'repaired' if p.repaired else p.kind:22} {p.subject}  {p.message}"
               + (f" [{p.action}]" if p.action else "") for p in self.problems]
        out += [f"repair failed: {e}" for e in self.repair_errors]
        out += [f"loads: {h}  signatures: {', '.join(s) or '(none)'}" for h, s in sorted(self.signatures.items())]
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        out.append(f"verified {self.blobs} blob(s) ({self.bytes} bytes, {rate:.0f} MB/s) and {self.models} "
                   f"model(s) in {self.seconds:.1f}s")
        if self.partial and self.state is not None:
            out.append(f"partial scrub: stopped at --max-duration; the next run continues with the "
                       f"{self.state.phase} after {self.state.cursor[:16] or 'the start'}")
        return out

    def to_json(self) -> dict[str, Any]:
        outcome = self.outcome()
        return {"problems": [p.to_json() for p in self.problems], "blobs": self.blobs, "bytes": self.bytes,
                "models": self.models, "signatures": self.signatures, "partial": self.partial,
                "seconds": self.seconds, "repair_errors": self.repair_errors,
                "outcome": outcome.code,
                "state": self.state.to_json() if self.state else None}


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

    def problem(self, kind: str, subject: str, message: str, models: tuple[str, ...] = ()) -> None:
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
        """Take every model with manifest ``digest`` out of service (once)."""
        if digest in self.out_of_service:
            return
        self.out_of_service.add(digest)
        aliases = tuple(a for r in self.by_manifest.get(digest, []) for a in r.aliases)
        take_out_of_service(self.store, digest, aliases, reason)

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
        for res in hash_many(self.blob_keys(state.cursor), self.options.workers, self.expired, throttle):
            self.did_work = True
            if res.digest is None:
                if self.options.handles and res.error == "missing":
                    pass  # reported per model (blob_missing), with a repair path
                elif res.error != "missing":  # vanished: pruned meanwhile
                    self.problem("blob_unreadable", res.key, f"cannot read: {res.error}")
            elif res.digest != res.key:
                users = self.users_of(res.key)
                quarantine(self.store, self.store.blob_path(res.key), "blob", res.key, f"sha256 is {res.digest}")
                for digest in users:
                    self.retire(digest, f"blob {res.key} is corrupt")
                self.problem("blob_corrupt", res.key, f"content hashes to {res.digest[:16]}…; quarantined, "
                             f"{len(users)} model version(s) taken out of service", self.handles_of(users))
            self.report.blobs += 1
            self.report.bytes += res.size
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
            self.problem("manifest_missing", digest, "the manifest of this model is missing", h)
            self.retire(digest, "manifest missing")
            return
        if hashlib.sha256(data).hexdigest() != digest:
            quarantine(store, store.manifest_path(digest), "manifest", digest, "digest mismatch")
            self.problem("manifest_corrupt", digest, "manifest content does not match its name; quarantined", h)
            self.retire(digest, "manifest corrupt")
            return
        try:
            manifest = Manifest.from_bytes(data, str(store.manifest_path(digest)))
            check_structure([f.path for f in manifest.files], ref.handle)
        except CachemgrError as err:
            self.problem("structure", digest, str(err), h)
            self.retire(digest, "not a valid SavedModel")
            return
        for f in manifest.files:
            if not store.has_blob(f.sha256):
                self.problem("blob_missing", f.sha256, f"blob of {f.path} is missing from the store", h)
        if not self.check_snapshot(ref, manifest):
            return
        self.check_view(ref)
        self.loadable.append(ref)

    def check_snapshot(self, ref: Ref, manifest: Manifest) -> bool:
        root = self.store.snapshot_path(ref.manifest)
        h = (ref.handle,)
        if not root.is_dir():
            self.problem("snapshot_missing", ref.manifest, "the snapshot directory is missing", h)
            self.retire(ref.manifest, "snapshot missing")
            return False
        bad: list[tuple[str, str]] = []
        writable: list[str] = []
        for f in manifest.files:
            path = root / f.path
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                bad.append(("snapshot_file_missing", f"{f.path} is missing"))
                continue
            if not stat.S_ISREG(st.st_mode):
                bad.append(("snapshot_file_differs", f"{f.path} is not a regular file"))
                continue
            try:
                blob = os.lstat(self.store.blob_path(f.sha256))
                same = (blob.st_dev, blob.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                same = False
            if not same and (st.st_size != f.size or sha256_file(str(path))[0] != f.sha256):
                bad.append(("snapshot_file_differs", f"{f.path} differs from its blob"))
            if st.st_mode & 0o222:
                writable.append(f.path)
        expected = set(manifest.dirs) | {f.path for f in manifest.files}
        extra = sorted(p for p in _walk(root) if p not in expected)
        if extra:
            bad.append(("snapshot_extra", f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if extra[1:]
                                                                      else "")))
        for kind, message in bad:
            self.problem(kind, ref.manifest, message, h)
        if bad:
            self.retire(ref.manifest, bad[0][1])
            return False
        if writable:
            self.problem("snapshot_mode", ref.manifest, f"{len(writable)} file(s) writable, e.g. {writable[0]}", h)
        return True

    def check_view(self, ref: Ref) -> None:
        target = os.path.join("..", "snapshots", ref.manifest)
        for alias in ref.aliases:
            entry = self.store.view / hub_key(alias)
            try:
                found = os.readlink(entry)
            except FileNotFoundError:
                self.problem("view_missing", alias, f"no view link for {alias}", (ref.handle,))
                continue
            except OSError:
                continue  # a real directory that plain tensorflow_hub downloaded: not ours
            if found != target and self._owner(alias) in (None, ref.handle):
                self.problem("view_wrong", alias, f"view link for {alias} points at {found}", (ref.handle,))

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
                self.problem("view_dangling", entry.name, f"view link points at missing {os.readlink(entry.path)}")

    def check_deep(self) -> None:
        refs = [r for r in self.loadable if r.manifest not in self.out_of_service]
        results = load_models(sorted({self.store.snapshot_path(r.manifest) for r in refs}))
        for ref in refs:
            res = results.get(str(self.store.snapshot_path(ref.manifest)))
            if res is None:
                continue
            if res.ok:
                self.report.signatures[ref.handle] = list(res.signatures)
            else:
                self.problem("load_failed", ref.handle, f"tf.saved_model.load fails although every hash matches "
                             f"(the archive itself is broken; pin another version): {res.error}", (ref.handle,))


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
