"""Fuzzing (issue 10): hypothesis properties over the three parsers of untrusted input.

- tar ingest (``ingest_stream``): random member sequences (hostile names, every member type,
  GNU long names, PAX headers, sizes), plain, gzip or zstd, byte flips, truncation, trailing
  junk, delivered in short reads. It returns a valid, verifiable SavedModel or raises a
  CachemgrError; nothing is written outside the store; a failure leaves ``tmp/`` empty and
  publishes nothing.
- handles (``parse_handle``): arbitrary text and URL-like strings give a Handle or a
  HandleError; a Handle's canonical form parses to itself, and every alias parses to it.
- the bundle manifest (``BundleManifest.from_bytes``): arbitrary bytes, arbitrary JSON, deep
  nesting and mutations of a valid document give a BundleManifest or a CachemgrError.

Everything runs in-process. Two hypothesis profiles are registered here: ``ci`` (the default:
a fixed number of examples per property, under a minute for the whole file on 2 cores) and
``long`` (50x more examples, about half an hour). Run longer with::

    CACHEMGR_FUZZ_PROFILE=long python -m pytest tests/test_fuzz.py --hypothesis-show-statistics

(``HYPOTHESIS_PROFILE=long`` works too). ``--hypothesis-profile=long`` is honoured only once the
profile is registered before this module is imported (pytest loads the option's profile at
configure time, before collection), i.e. from conftest.py. Failing examples print a
reproduction blob (``@reproduce_failure``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cachemgr.bundle.format import BundleManifest
from cachemgr.bundle.plan import plan_blobs
from cachemgr.errors import CachemgrError, HandleError
from cachemgr.handles import Handle, parse_handle
from cachemgr.ingest.unpack import IngestResult, ingest_stream
from cachemgr.store.fs import remove_quietly
from cachemgr.store.manifest import FileEntry, Limits, Manifest, check_manifest, parse_manifest
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref

# -- profiles -------------------------------------------------------------------------------------
_COMMON: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "derandomize": False,
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow explain
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=300, **_COMMON)
settings.register_profile("long", max_examples=15_000, **_COMMON)


def _profile_name() -> str:
    """``long`` if asked for (env var, or a loaded profile of that name), else the bounded ``ci``."""
    for var in ("CACHEMGR_FUZZ_PROFILE", "HYPOTHESIS_PROFILE"):
        if os.environ.get(var) in ("ci", "long"):
            return os.environ[var]
    return "long" if settings.get_current_profile_name() == "long" else "ci"


PROFILE = settings.get_profile(_profile_name())
SCALE = PROFILE.max_examples / 300  # per-property counts below are relative to the ci profile


def fuzz(examples: int) -> settings:
    """The active profile with this property's share of examples."""
    return settings(PROFILE, max_examples=max(1, int(examples * SCALE)))


# == tar ingest ====================================================================================
LIMITS = Limits(max_bytes=1 << 20, max_entries=40)
MODEL_FILES = {
    "saved_model.pb": b"\x08\x01fake saved model",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"\x00" * 37,
}
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


# == handles =======================================================================================
handle_chars = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(list("/:?#[]@%&=+.-_ \t\n\r\x00\\") + ["\uff03", "\uff0f", "\u2100", "\u0130", "K"]),
)
handle_text = st.text(handle_chars, max_size=40)
names_re = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)
segment = st.one_of(st.sampled_from(["google", "nnlm-en-dim128", "2", "007", "models", "frameworks", "variations",
                                     "versions", "TensorFlow2", "default", "a.b", "-x", ".x", "", "..", "1\n",
                                     "x\n", "%2F", "é"]),
                    names_re, names_re.map(lambda t: t + "\n"), st.from_regex(r"[0-9]{1,3}\n?", fullmatch=True),
                    handle_text)
hosts = st.one_of(st.sampled_from(["tfhub.dev", "www.tfhub.dev", "TFHUB.DEV", "kaggle.com", "www.kaggle.com",
                                   "hub.tensorflow.google.cn", "example.org", "[::1]", "[::1", "::1]", "[v1.x]",
                                   "127.0.0.1", "h:8080", "h:0", "h:99999", "h:abc", "h:", "u:p@h", "@h", "",
                                   "xn--nxasmq6b", "\uff03h", "tfhub.dev."]), handle_text)


@st.composite
def url_like(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https://", "http://", "HTTP://", "ftp://", "", "", "//", "https:/"]))
    segs = draw(st.lists(segment, max_size=9))
    query = draw(st.one_of(st.just(""), st.sampled_from(["?tf-hub-format=compressed", "?a=1&b=", "?a=%zz&a=1",
                                                          "?", "?x=1;y=2", "?tf%2Dhub-format=x"]),
                           handle_text.map(lambda t: "?" + t)))
    frag = draw(st.one_of(st.just(""), handle_text.map(lambda t: "#" + t)))
    slash = draw(st.sampled_from(["", "/", "//"]))
    pad = draw(st.sampled_from(["", " ", "\t", "\n "]))
    if not scheme and draw(st.booleans()):  # kagglehub-like: segments only, usually five
        segs = draw(st.lists(segment, min_size=4, max_size=6))
        if draw(st.booleans()):  # well-formed, but one segment may end in a control character
            version = draw(st.from_regex(r"[0-9]{1,3}", fullmatch=True))
            segs = [*draw(st.lists(names_re, min_size=4, max_size=4)), version]
            i = draw(st.integers(0, 4))
            segs[i] += draw(st.sampled_from(["", "\n", "\r", "\t", " ", "\x00", "\x0b"]))
        return pad + "/".join(segs) + slash + pad
    return pad + scheme + draw(hosts) + "/" + "/".join(segs) + slash + query + frag + pad


def check_handle(text: str) -> None:
    try:
        handle = parse_handle(text)
    except HandleError:
        return
    assert isinstance(handle, Handle)
    again = parse_handle(handle.canonical)  # the canonical form is a handle: no HandleError here
    assert again.canonical == handle.canonical and again.kind == handle.kind
    assert parse_handle(again.canonical) == again
    for alias in handle.aliases():
        assert parse_handle(alias).canonical == handle.canonical, f"alias {alias!r} names another model"


@given(text=handle_text)
@fuzz(1000)
def test_parse_handle_arbitrary_text(text: str) -> None:
    check_handle(text)


@given(text=url_like())
@fuzz(1000)
def test_parse_handle_url_like(text: str) -> None:
    check_handle(text)


def test_handle_strategies_reach_every_kind() -> None:
    """Hand-picked members of the strategies' space parse to each kind (the property is not vacuous)."""
    kinds = {parse_handle(t).kind for t in ("https://tfhub.dev/google/nnlm-en-dim128/2",
                                            "o/m/TensorFlow2/default/1", "https://hub.tensorflow.google.cn/g/m/1",
                                            "http://example.org/a?a=1&b=")}
    assert kinds == {"tfhub", "kaggle", "tfhub_cn", "http"}


# == the bundle manifest ===========================================================================
def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _model(*extra: str) -> Manifest:
    files = [*MODEL_FILES, "assets/vocab.txt", *extra]
    return Manifest.build([FileEntry(n, 0o644, len(n), _h(n)) for n in files], set())


def valid_bundle_doc() -> dict[str, Any]:
    a, b = _model(), _model("extra")
    refs = [Ref(handle="https://tfhub.dev/g/a/1", manifest=a.digest, aliases=("https://tfhub.dev/g/a/1", "x"),
                size=a.size, files=len(a.files)),
            Ref(handle="https://tfhub.dev/g/b/1", manifest=b.digest, aliases=("https://tfhub.dev/g/b/1",),
                size=b.size, files=len(b.files), etag="e", archive_size=9)]
    manifests = {a.digest: a, b.digest: b}
    bundle = BundleManifest(1.0, "cachemgr fuzz", tuple(refs), manifests, plan_blobs(refs, manifests, None),
                            pins=[{"handle": "https://tfhub.dev/g/a/1"}], base={"created": 0.0})
    doc: dict[str, Any] = json.loads(bundle.to_bytes())
    return doc


VALID_DOC = valid_bundle_doc()
VALID_BYTES = json.dumps(VALID_DOC).encode()

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400), st.floats(),
    st.text(max_size=12), st.sampled_from([_h("x"), "", "cachemgr-bundle", "0" * 64, 1, 0, -1, 1e400, -1e400]),
)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                             max_size=4),
                           max_leaves=20)


def _parse_bundle(data: bytes) -> None:
    try:
        parsed = BundleManifest.from_bytes(data, "fuzz.bundle")
    except CachemgrError:
        return
    assert isinstance(parsed, BundleManifest)
    again = BundleManifest.from_bytes(parsed.to_bytes(), "fuzz.bundle")  # what it writes, it reads back
    assert again.manifests == parsed.manifests and again.blobs == parsed.blobs and again.refs == parsed.refs


def test_valid_bundle_doc_parses() -> None:
    parsed = BundleManifest.from_bytes(VALID_BYTES, "b")
    assert len(parsed.refs) == 2 and len(parsed.manifests) == 2 and parsed.pins is not None


@given(data=st.one_of(st.binary(max_size=300), st.just(VALID_BYTES).flatmap(
    lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))))
@fuzz(500)
def test_bundle_manifest_arbitrary_bytes(data: bytes) -> None:
    _parse_bundle(data)


@st.composite
def bundle_json(draw: st.DrawFn) -> bytes:
    """Arbitrary JSON, shaped like a bundle manifest often enough to get past its first checks."""
    doc = draw(json_values)
    if draw(st.booleans()):
        doc = draw(st.fixed_dictionaries({"kind": st.just("cachemgr-bundle"), "format": st.just(1)},
                                         optional={k: json_values for k in VALID_DOC if k not in ("kind", "format")}))
    depth = draw(st.sampled_from([0, 0, 0, 50, 990, 3000, 100_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    text = json.dumps(doc)
    if depth:  # deep nesting, inside a field the parser descends into
        key = draw(st.sampled_from(["manifests", "refs", "blobs", "created", "pins"]))
        deep = opener * depth + "1" + closer * depth
        text = json.dumps({**VALID_DOC, key: "@@"}).replace('"@@"', deep)
    return text.encode()


@given(data=bundle_json())
@fuzz(500)
def test_bundle_manifest_arbitrary_json(data: bytes) -> None:
    _parse_bundle(data)


def _pick_path(draw: st.DrawFn, doc: Any) -> tuple[Any, ...]:
    """A path into ``doc`` below its root: each level's keys equally likely (top-level fields as often as
    deep ones); ``kind`` and ``format`` rarely, so that most mutants get past the first checks."""
    path: tuple[Any, ...] = ()
    node = doc
    while isinstance(node, dict | list) and node:
        if len(path) > 0 and draw(st.booleans()):
            break
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not path and draw(st.integers(0, 9)) != 9:
            keys = [k for k in keys if k not in ("kind", "format")] or keys
        key = draw(st.sampled_from(keys))
        path, node = (*path, key), node[key]
    return path


@dataclass
class Mutated:
    doc: Any
    log: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Mutated({'; '.join(self.log)})"


@st.composite
def mutated_bundles(draw: st.DrawFn) -> Mutated:
    out = Mutated(json.loads(VALID_BYTES))
    for _ in range(draw(st.integers(1, 4))):
        path = _pick_path(draw, out.doc)
        action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "insert", "tweak"]))
        if not path:  # an empty document: nothing left to mutate
            break
        parent = out.doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[last])))
        elif action == "insert" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        elif action == "tweak":
            value = parent[last]
            if isinstance(value, bool):
                parent[last] = not value
            elif isinstance(value, int | float):
                parent[last] = draw(st.sampled_from([value + 1, -value - 1, 0, 10**400, 0.5, 1e400, float("nan")]))
            elif isinstance(value, str):
                parent[last] = draw(st.sampled_from([value[:-1], value + "0", value.upper(), "../" + value, "",
                                                     value + "/", "/" + value, value + "\x00"]))
        out.log.append(f"{action} {list(path)!r}")
    return out


@given(mutated=mutated_bundles())
@fuzz(600)
def test_bundle_manifest_mutations(mutated: Mutated) -> None:
    _parse_bundle(json.dumps(mutated.doc).encode())
