"""Fuzzing the tar ingest (``ingest_stream``), the first parser of untrusted input.

Random member sequences (hostile names, every member type, GNU long names, PAX headers, sizes),
plain, gzip or zstd, byte flips, truncation, trailing junk, delivered in short reads. It returns
a valid, verifiable SavedModel or raises a CachemgrError; nothing is written outside the store;
a failure leaves ``tmp/`` empty and publishes nothing.

Everything runs in-process, under the hypothesis profiles of tests/support/fuzz.py (``ci`` by
default, bounded; ``long`` with ``--hypothesis-profile=long`` or ``CACHEMGR_FUZZ_PROFILE=long``).
Failing examples print a reproduction blob (``@reproduce_failure``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from cachemgr.errors import CachemgrError
from cachemgr.ingest.unpack import IngestResult, ingest_stream
from cachemgr.store.fs import remove_quietly
from cachemgr.store.manifest import Limits, check_manifest, parse_manifest
from cachemgr.store.objects import Store
from tests.support.fuzz import MODEL_FILES, fuzz

# == tar ingest ====================================================================================
LIMITS = Limits(max_bytes=1 << 20, max_entries=40)
SENTINEL = "{SENTINEL}"  # replaced by the sentinel directory's absolute path at run time
TYPES: dict[str, bytes] = {
    "reg": tarfile.REGTYPE, "areg": tarfile.AREGTYPE, "cont": tarfile.CONTTYPE, "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE, "sparse": tarfile.GNUTYPE_SPARSE, "longname": tarfile.GNUTYPE_LONGNAME,
    "longlink": tarfile.GNUTYPE_LONGLINK, "pax": tarfile.XHDTYPE, "paxglobal": tarfile.XGLTYPE,
    "volume": b"V", "odd": b"Z",
}
# written as raw members, these change how the next header or the data are read (tarfile's rules)
RAW_HEADER_TYPES = {"sparse", "longname", "longlink", "pax", "paxglobal"}
DATA_TYPES = {"reg", "areg", "cont", "sparse", "longname", "longlink", "pax", "paxglobal", "odd"}

hostile_names = st.sampled_from([
    "", ".", "..", "./", "/", "//", "../x", "a/../../x", "../../../../sentinel/escaped",
    f"{SENTINEL}/absolute", f"/{SENTINEL}/x", "/etc/passwd", "./saved_model.pb", "saved_model.pb/",
    "a//b", "a/./b", "a\\b", "..\\x", "x\x00y", "saved_model.pb\x00.txt", "variables", "variables/",
    "variables/variables.index/x", "a", "a/b", "a/b/c", "é/ü/日本", "\u202e", "d" * 300, "a/" * 2100 + "f",
    "e" * 99, "f" * 100, "g" * 101, "h/" * 60 + "i", "CON", "a b\tc\nd", "variables/" + "v" * 256,
    "j" * 255, "k" * 256 + "/l",
])
name_text = st.text(st.characters(codec="utf-8"), max_size=24)
names = st.one_of(hostile_names, hostile_names, st.sampled_from(sorted(MODEL_FILES)), name_text,
                  st.lists(st.sampled_from(["a", "b", "..", ".", "", "variables", "saved_model.pb"]),
                           min_size=1, max_size=6).map("/".join))
datas = st.one_of(st.binary(max_size=64), st.integers(0, 700_000).map(lambda n: b"z" * n))
pax_keys = st.sampled_from(["path", "linkpath", "size", "mtime", "uid", "uname", "hdrcharset", "comment",
                            "GNU.sparse.map", "GNU.sparse.size", "GNU.sparse.major", "GNU.sparse.minor",
                            "GNU.sparse.name", "GNU.sparse.realsize", "GNU.sparse.offset",
                            "GNU.sparse.numbytes", "GNU.sparse.numblocks", "SCHILY.devmajor"])
pax_values = st.one_of(name_text, st.sampled_from(["0", "-1", "1,2,3", "x,y", "1.0", "BINARY", "99999999999999",
                                                   "0.1", "1", "a,1", "../x", "\x00"]))


@dataclass(frozen=True)
class Member:
    name: str
    kind: str
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    pax: dict[str, str] | None = None

    def __repr__(self) -> str:
        extra = f", pax={self.pax!r}" if self.pax else ""
        return (f"Member({self.name[:80]!r}, {self.kind!r}, <{len(self.data)} bytes>, "
                f"link={self.linkname[:40]!r}{extra})")


members = st.builds(
    Member, names, st.one_of(st.sampled_from(["reg", "dir"]), st.sampled_from(sorted(TYPES))), datas,
    st.one_of(st.just(""), names), st.integers(0, 0o7777777),
    st.one_of(st.none(), st.dictionaries(pax_keys, pax_values, max_size=3)),
)


escapes = st.sampled_from([
    (Member("../../../../sentinel/escaped", "reg", b"x"),),
    (Member(f"{SENTINEL}/absolute", "reg", b"x"),),
    (Member(f"{SENTINEL}/absolute-dir", "dir"),),
    (Member("evil", "sym", linkname=SENTINEL), Member("evil/through-symlink", "reg", b"x")),
    (Member("evil", "sym", linkname="../../../../sentinel"), Member("evil/through-symlink", "reg", b"x")),
    (Member("evil", "lnk", linkname=f"{SENTINEL}/target"), Member("evil", "reg", b"x")),
    (Member("evil", "dir"), Member("evil", "sym", linkname=SENTINEL), Member("evil/x", "reg", b"x")),
    (Member("saved_model.pb", "sym", linkname="/etc/hostname"),),
    (Member("evil", "lnk", linkname="saved_model.pb"),),
])


@dataclass(frozen=True)
class TarCase:
    members: tuple[Member, ...]
    fmt: int
    compression: str
    flips: tuple[tuple[int, int], ...]  # (offset, byte) in the plain tar
    cut: int | None  # truncate at this offset (modulo the length) ...
    cut_compressed: bool  # ... of the compressed stream rather than the plain tar
    junk: bytes  # appended after the (compressed) stream
    chunk: int  # the source returns at most this many bytes per read

    @property
    def pristine(self) -> bool:
        """Delivered as written, with no header fields we do not model: an oracle applies."""
        return (not self.flips and self.cut is None and not self.junk
                and all(m.pax is None and "\x00" not in m.name and m.kind not in RAW_HEADER_TYPES
                        for m in self.members))


@st.composite
def tar_cases(draw: st.DrawFn) -> TarCase:
    base: list[Member] = []
    if draw(st.booleans()) or draw(st.booleans()):  # 3 in 4 start from a valid model, shuffled
        base = [Member(n, "reg", d) for n, d in MODEL_FILES.items()]
        if draw(st.booleans()):
            base.insert(0, Member("variables", "dir"))
        base = draw(st.permutations(base))
    extra = draw(st.lists(members, max_size=6))
    if draw(st.integers(0, 4)) == 0:
        extra += draw(escapes)
    seq = list(base)
    for m in extra:
        seq.insert(draw(st.integers(0, len(seq))), m)
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    compression = draw(st.sampled_from(["none", "none", "gzip", "zstd"]))
    damage = draw(st.sampled_from(["none", "none", "none", "flips", "cut", "both"]))
    flips: tuple[tuple[int, int], ...] = ()
    if damage in ("flips", "both"):
        flips = tuple(draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=3)))
    cut = draw(st.integers(0, 1 << 20)) if damage in ("cut", "both") else None
    junk = draw(st.one_of(st.just(b""), st.just(b""), st.binary(min_size=1, max_size=2048),
                          st.just(b"\x00" * 1024)))
    chunk = draw(st.sampled_from([1 << 20, 512, 7, 1]))
    return TarCase(tuple(seq), fmt, compression, flips, cut, draw(st.booleans()), junk, chunk)


def build_tar(case: TarCase, sentinel: Path) -> tuple[bytes, dict[str, bytes]]:
    """The archive bytes as delivered, and the regular files the tarfile writer really wrote."""
    buf = io.BytesIO()
    written: dict[str, bytes] = {}
    with tarfile.open(fileobj=buf, mode="w", format=case.fmt, encoding="utf-8") as tar:
        for m in case.members:
            info = tarfile.TarInfo(m.name.replace(SENTINEL, str(sentinel)))
            info.type = TYPES[m.kind]
            info.mode = m.mode
            info.linkname = m.linkname.replace(SENTINEL, str(sentinel))
            if m.pax is not None:
                info.pax_headers = dict(m.pax)
            data = m.data if m.kind in DATA_TYPES else b""
            info.size = len(data)
            try:  # what addfile would refuse to write
                info.tobuf(cast(Literal[0, 1, 2], case.fmt), tar.encoding, tar.errors)
            except (ValueError, UnicodeError):
                continue  # e.g. a name too long for ustar: the writer cannot express it
            tar.addfile(info, io.BytesIO(data) if data else None)
            if m.kind in ("reg", "areg", "cont"):
                written[info.name] = data
    plain = bytearray(buf.getvalue())
    for offset, byte in case.flips:
        plain[offset % len(plain)] = byte
    raw = bytes(plain)
    if case.cut is not None and not case.cut_compressed:
        raw = raw[: case.cut % (len(raw) + 1)]
    if case.compression == "gzip":
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    elif case.compression == "zstd":
        raw = zstandard.ZstdCompressor(level=1).compress(raw)
    if case.cut is not None and case.cut_compressed:
        raw = raw[: case.cut % (len(raw) + 1)]
    return raw + case.junk, written


class ShortReads:
    """A byte source that returns at most ``chunk`` bytes per read, as a socket does."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def read(self, n: int = -1, /) -> bytes:
        n = len(self._data) - self._pos if n < 0 else n
        out = bytes(self._data[self._pos : self._pos + min(n, self._chunk)])
        self._pos += len(out)
        return out


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def _tree(root: Path) -> tuple[set[str], set[str]]:
    """The regular files and the directories under ``root``; nothing else (no link) may be there."""
    files: set[str] = set()
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            full = Path(dirpath, entry)
            mode = full.lstat().st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), f"{full} is neither a file nor a directory"
            (dirs if stat.S_ISDIR(mode) else files).add(str(full.relative_to(root)))
    return files, dirs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_published(store: Store, result: IngestResult, written: dict[str, bytes], pristine: bool) -> None:
    """A successful ingest is a valid SavedModel, filed under its digest, whose blobs verify."""
    manifest = result.manifest
    check_manifest(manifest, "fuzz", LIMITS)  # SavedModel structure, paths, modes, caps
    assert result.digest == manifest.digest
    on_disk = parse_manifest(store.manifest_path(result.digest).read_bytes(), "fuzz", digest=result.digest)
    assert on_disk == manifest
    for sub in _files_under(store.blobs):  # the store verifies: each blob's sha256 is its name
        if sub.is_file():
            assert _sha256(sub) == sub.name, f"blob {sub.name} does not hash to its name"
            assert sub.parent.name == sub.name[:2]
    snapshot = store.snapshot_path(result.digest)
    assert result.snapshot == snapshot
    found, dirs = _tree(snapshot)
    assert found == {f.path for f in manifest.files} and dirs == set(manifest.dirs)
    for f in manifest.files:
        assert store.has_blob(f.sha256)
        assert _sha256(snapshot / f.path) == f.sha256 and (snapshot / f.path).stat().st_size == f.size
    remove_quietly(snapshot)  # the snapshot can be rebuilt from the blobs (repair, import, upstream fetch)
    assert store.materialize(on_disk) == snapshot
    assert _tree(snapshot) == (found, dirs)
    if pristine:  # every file came from the archive, with its bytes
        expected = {_normal(n): hashlib.sha256(d).hexdigest() for n, d in written.items()}
        for f in manifest.files:
            assert expected.get(f.path) == f.sha256, f"{f.path!r} is not what the archive holds"


@given(case=tar_cases())
@fuzz(400)
def test_tar_ingest_never_crashes_nor_escapes(case: TarCase) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp)
        sentinel = root / "sentinel"
        sentinel.mkdir()
        store = Store(root / "store")
        store.create()
        layout = sorted(p.name for p in store.home.iterdir())
        data, written = build_tar(case, sentinel)
        result: IngestResult | None = None
        try:
            result = ingest_stream(store, ShortReads(data, case.chunk), "fuzz.tar", LIMITS)
        except CachemgrError:
            pass
        # nothing outside the store, nothing new at its top, no temp left behind
        assert sorted(p.name for p in root.iterdir()) == ["sentinel", "store"]
        assert _files_under(sentinel) == [], f"written outside the store: {_files_under(sentinel)}"
        assert sorted(p.name for p in store.home.iterdir()) == layout
        assert _files_under(store.tmp) == [], f"left in tmp/: {_files_under(store.tmp)}"
        if result is None:  # a failure publishes nothing
            for sub in (store.blobs, store.manifests, store.snapshots):
                assert _files_under(sub) == [], f"published despite failing: {_files_under(sub)}"
        else:
            check_published(store, result, written, case.pristine)


def test_tar_case_strategy_reaches_success_and_every_refusal() -> None:
    """The generator is not vacuous: a pristine model ingests, and its hostile variants fail."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp)
        store = Store(root / "store")
        store.create()
        model = tuple(Member(n, "reg", d) for n, d in MODEL_FILES.items())

        def run(*extra: Member, compression: str = "none", cut: int | None = None) -> IngestResult:
            case = TarCase(model + extra, tarfile.PAX_FORMAT, compression, (), cut, False, b"", 7)
            data, _ = build_tar(case, root / "sentinel")
            return ingest_stream(store, ShortReads(data, 7), "t.tar", LIMITS)

        assert {f.path for f in run(compression="zstd").manifest.files} == set(MODEL_FILES)
        for bad in (Member("../x", "reg"), Member("l", "sym", linkname="/etc"), Member("d", "chr"),
                    Member("saved_model.pb", "reg"), Member("big", "reg", b"z" * (1 << 20))):
            with pytest.raises(CachemgrError):
                run(bad, compression="gzip")
        with pytest.raises(CachemgrError):
            run(compression="gzip", cut=3000)
