"""Air-gapped bundles, end to end: real stores filled from the fake origin, real subprocesses.

One source store (pulled once per module) is exported; every test imports into its own fresh
home. Tampered bundles are well-formed apart from the one thing changed (valid tar, zstd and
end trailer), so each check is exercised on its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.archives import archive_bytes
from tests.support.bundles import (
    BundleMember,
    assert_unchanged,
    extra_member,
    flip_blob,
    manifest_of,
    members,
    newer_format,
    run_offline,
    state,
    tree_digests,
    write_bundle,
)
from tests.support.cli import Cli
from tests.support.env import BASE_ENV, REPO
from tests.support.origin import FakeOrigin

MYMUL = "https://tfhub.dev/google/mymul/1"
MYMUL_KAGGLE = "https://www.kaggle.com/models/google/mymul/frameworks/tensorFlow2/variations/mymul/versions/1"
TEXT1 = "https://tfhub.dev/google/text-embed/1"
TEXT2 = "https://tfhub.dev/google/text-embed/2"


class Src:
    """The connected side: a store with mymul and both text versions, and a full bundle."""

    def __init__(self, root: Path, origin: FakeOrigin) -> None:
        self.root = root
        self.env = dict(BASE_ENV, CACHEMGR_MIRRORS=origin.mirrors, CACHEMGR_RETRIES="3",
                        CACHEMGR_BACKOFF="0.05", XDG_CONFIG_HOME=str(root / "xdg"))
        self.cli = Cli(root / "src-home", self.env)
        self.origin = origin

    def home_cli(self, home: Path) -> Cli:
        return Cli(home, self.env)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory, _origin_server: FakeOrigin) -> Src:
    _origin_server.reset()
    s = Src(tmp_path_factory.mktemp("bundle-src"), _origin_server)
    r = s.cli("pull", MYMUL, TEXT1, TEXT2)
    assert r.code == 0, r.err
    r = s.cli("export", MYMUL, TEXT1, "-o", str(s.root / "full.tar.zst"))
    assert r.code == 0, r.err
    r = s.cli("export", MYMUL, "-o", str(s.root / "mymul.tar.zst"))
    assert r.code == 0, r.err
    return s


# -- the real thing ----------------------------------------------------------------------------
def test_bundle_crosses_the_gap_and_unchanged_hub_code_loads_it(src: Src, tmp_path: Path) -> None:
    assert shutil.which("unshare"), "unshare (util-linux) is required: .ci/run installs it"
    bundle = src.root / "full.tar.zst"
    items = members(bundle)
    names = [i.name for i, _ in items]
    assert names[0] == "manifest.json"
    blob_names = [n for n in names[1:]]
    assert all(n.startswith("blobs/") for n in blob_names)
    assert len(blob_names) == len(set(blob_names))  # each blob once
    for info, body in items[1:]:
        assert hashlib.sha256(body).hexdigest() == info.name.removeprefix("blobs/")
    doc = manifest_of(bundle)
    assert doc["format"] == 1 and doc["kind"] == "cachemgr-bundle" and str(doc["tool"]).startswith("cachemgr ")
    refs = {r["handle"]: r for r in doc["refs"]}  # type: ignore[attr-defined]
    assert set(refs) == {MYMUL, TEXT1}
    assert MYMUL_KAGGLE in refs[MYMUL]["aliases"] and refs[MYMUL]["url"]
    assert sorted(b["sha256"] for b in doc["blobs"]) == sorted(n.removeprefix("blobs/") for n in blob_names)  # type: ignore[attr-defined]

    home = tmp_path / "airgap"
    env = dict(BASE_ENV, CACHEMGR_HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    imp = run_offline([sys.executable, "-m", "cachemgr", "--offline", "import", str(bundle)], env)
    assert imp.returncode == 0, imp.stderr
    assert "2 added" in imp.stdout and MYMUL in imp.stdout

    host, port = src.origin.base.removeprefix("http://").split(":")
    job = run_offline([sys.executable, str(REPO / "tests" / "offline_hub_job.py"), MYMUL, MYMUL_KAGGLE, TEXT1,
                       host, port], dict(BASE_ENV, TFHUB_CACHE_DIR=str(home / "view")))
    assert job.returncode == 0, job.stderr[-3000:]
    out = json.loads(next(x for x in job.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))
    assert out["network"].startswith("unreachable"), out["network"]
    assert out["load"] == [6.0] and out["load_kaggle_alias"] == [3.0]
    assert out["v_before_after"][0] == 3.0 and out["v_before_after"][1] != 3.0
    assert out["text_shape"][0] == 2

    # Same snapshot trees as on the connected side, and provenance travelled.
    cli = src.home_cli(home)
    info = json.loads(cli("info", MYMUL, "--json").out)
    src_info = json.loads(src.cli("info", MYMUL, "--json").out)
    assert info["manifest"] == src_info["manifest"] and info["url"] == src_info["url"]
    assert tree_digests(Path(info["path"])) == tree_digests(Path(src_info["path"]))


def test_reimport_is_a_noop_that_says_so(src: Src, tmp_path: Path) -> None:
    cli = src.home_cli(tmp_path / "h")
    assert cli("import", str(src.root / "mymul.tar.zst")).code == 0
    before = state(tmp_path / "h")
    r = cli("--offline", "import", str(src.root / "mymul.tar.zst"), "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["noop"] is True and doc["added"] == [] and doc["unchanged"] == [MYMUL] and doc["blobs_added"] == 0
    assert "nothing to import" in cli("import", str(src.root / "mymul.tar.zst")).out
    assert_unchanged(tmp_path / "h", before)
    # A bigger bundle over it adds only what is new and skips what is there.
    doc = json.loads(cli("import", str(src.root / "full.tar.zst"), "--json").out)["results"][0]
    assert doc["added"] == [TEXT1] and doc["unchanged"] == [MYMUL] and doc["blobs_skipped"] > 0


# -- refusals -----------------------------------------------------------------------------------
TAMPER: dict[str, tuple[Callable[[list[BundleMember]], list[BundleMember]], int, str]] = {
    "flipped-byte": (flip_blob, 8, "does not match its sha256"),
    "dropped-entry": (lambda items: items[:-1], 20, "is missing"),
    "added-entry": (extra_member, 20, "unexpected member"),
    "duplicated-entry": (lambda items: items + [items[-1]], 20, "second copy"),
    "newer-format": (newer_format, 20, "newer than this cachemgr"),
}


@pytest.fixture(scope="module")
def airgap_template(src: Src) -> Path:
    home = src.root / "airgap-template"
    r = src.home_cli(home)("import", str(src.root / "mymul.tar.zst"))
    assert r.code == 0, r.err
    return home


@pytest.fixture
def airgap(src: Src, airgap_template: Path, tmp_path: Path) -> tuple[Cli, Path]:
    """An air-gapped home that already holds mymul (so 'unchanged' is not just 'empty')."""
    home = tmp_path / "airgap"
    shutil.copytree(airgap_template, home, symlinks=True)
    return src.home_cli(home), home


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_bundle_is_refused_and_nothing_changes(case: str, src: Src, airgap: tuple[Cli, Path],
                                                        tmp_path: Path) -> None:
    cli, home = airgap
    tamper, code, needle = TAMPER[case]
    bad = write_bundle(tmp_path / "bad.tar.zst", tamper(members(src.root / "full.tar.zst")))
    before = state(home)
    r = cli("import", str(bad))
    assert r.code == code, (r.code, r.err)
    assert needle in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert_unchanged(home, before)


def test_rewritten_control_bundle_imports(src: Src, airgap: tuple[Cli, Path], tmp_path: Path) -> None:
    """The tamper helper itself produces importable bundles when it changes nothing."""
    cli, home = airgap
    good = write_bundle(tmp_path / "same.tar.zst", members(src.root / "full.tar.zst"))
    r = cli("import", str(good))
    assert r.code == 0, r.err
    assert cli("path", TEXT1).code == 0


@pytest.mark.parametrize("cut", ["half", "last-bytes"])
def test_truncated_bundle_is_refused(cut: str, src: Src, airgap: tuple[Cli, Path], tmp_path: Path) -> None:
    cli, home = airgap
    data = (src.root / "full.tar.zst").read_bytes()
    bad = tmp_path / "cut.tar.zst"
    bad.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-3])
    before = state(home)
    r = cli("import", str(bad))
    assert r.code == 20 and "truncated" in r.err, r.err
    assert_unchanged(home, before)


def test_things_that_are_not_bundles_are_refused(src: Src, airgap: tuple[Cli, Path], tmp_path: Path) -> None:
    cli, home = airgap
    before = state(home)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    model_gz = tmp_path / "model.tar.gz"
    model_gz.write_bytes(src.origin.archive("google", "mymul", 1))
    model_zst = tmp_path / "model.tar.zst"
    model_zst.write_bytes(archive_bytes(Path(json.loads(src.cli("info", MYMUL, "--json").out)["path"]), "zst"))
    for path in (text, model_gz, model_zst):
        r = cli("import", str(path))
        assert r.code == 20 and "is not a cachemgr bundle" in r.err, (path, r.err)
    assert cli("import", str(tmp_path / "nope.tar.zst")).code == 2  # a missing file is a usage error (was 20)
    assert_unchanged(home, before)


# -- incremental ---------------------------------------------------------------------------------
class Delta:
    def __init__(self, path: Path, have: Path, shared: set[str]) -> None:
        self.path = path
        self.have = have
        self.shared = shared  # blobs text v2 shares with text v1 (the vocabulary asset, ...)


@pytest.fixture(scope="module")
def delta(src: Src, airgap_template: Path) -> Delta:
    """A receiver holding mymul + text v1 takes inventory; the sender makes a delta for text v2."""
    home = src.root / "receiver"
    shutil.copytree(airgap_template, home, symlinks=True)
    cli = src.home_cli(home)
    assert cli("import", str(src.root / "full.tar.zst")).code == 0
    have = src.root / "have.json"
    r = cli("inventory", "-o", str(have))
    assert r.code == 0, r.err
    out = src.root / "delta.tar.zst"
    r = src.cli("export", MYMUL, TEXT2, "--have", str(have), "-o", str(out), "--json")
    assert r.code == 0, r.err
    t1, t2 = (tree_digests(Path(json.loads(src.cli("path", h, "--json").out)["path"])) for h in (TEXT1, TEXT2))
    return Delta(out, have, set(t1.values()) & set(t2.values()))


def test_inventory_lists_manifests_and_blobs(src: Src, delta: Delta) -> None:
    inv = json.loads(delta.have.read_text())
    assert inv["kind"] == "cachemgr-inventory"
    receiver = src.root / "receiver"
    assert set(inv["blobs"]) == {p.name for p in (receiver / "blobs" / "sha256").rglob("*") if p.is_file()}
    assert set(inv["manifests"]) == {p.name.removesuffix(".json")
                                     for p in (receiver / "manifests" / "sha256").glob("*.json")}


def test_delta_omits_shared_blobs_and_imports(src: Src, delta: Delta, tmp_path: Path) -> None:
    vocab = hashlib.sha256(b"".join(w.encode() + b"\n" for w in
                                    ["<unk>", "hello", "world", "cache", "manager", "tensorflow", "hub"])).hexdigest()
    assert vocab in delta.shared
    doc = manifest_of(delta.path)
    packed = {b["sha256"] for b in doc["blobs"] if b["packed"]}  # type: ignore[attr-defined]
    listed = {b["sha256"] for b in doc["blobs"]}  # type: ignore[attr-defined]
    assert packed and delta.shared <= listed - packed
    assert {r["handle"] for r in doc["refs"]} == {MYMUL, TEXT2}  # type: ignore[attr-defined]
    assert {i.name for i, _ in members(delta.path)[1:]} == {f"blobs/{d}" for d in packed}

    home = tmp_path / "receiver"
    shutil.copytree(src.root / "receiver", home, symlinks=True)
    cli = src.home_cli(home)
    r = cli("--offline", "import", str(delta.path), "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)["results"][0]
    assert res["added"] == [TEXT2] and res["unchanged"] == [MYMUL] and res["blobs_added"] == len(packed)
    got = tree_digests(Path(json.loads(cli("path", TEXT2, "--json").out)["path"]))
    assert got == tree_digests(Path(json.loads(src.cli("path", TEXT2, "--json").out)["path"]))
    assert cli("path", TEXT1).code == 0


def test_delta_without_its_base_is_refused_and_names_missing_blobs(src: Src, delta: Delta,
                                                                   airgap: tuple[Cli, Path]) -> None:
    cli, home = airgap  # holds mymul only: the shared text blobs are missing here
    before = state(home)
    blobs_before = sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file())
    r = cli("import", str(delta.path))
    assert r.code == 21, r.err
    assert len(r.err.strip().splitlines()) == 1 and TEXT2 in r.err
    named = [d for d in delta.shared if d in r.err]
    assert named, r.err
    assert_unchanged(home, before)
    assert sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file()) == blobs_before


# -- split parts -----------------------------------------------------------------------------------
def test_split_parts_import_and_a_missing_part_is_named(src: Src, airgap: tuple[Cli, Path], tmp_path: Path) -> None:
    cli, home = airgap
    out = tmp_path / "media" / "b.tar.zst"
    out.parent.mkdir()
    r = src.cli("export", MYMUL, TEXT1, "-o", str(out), "--split-size", "4K")
    assert r.code == 0, r.err
    parts = sorted(out.parent.glob("b.tar.zst.part*"))
    assert len(parts) >= 3 and not out.exists()
    assert all(p.stat().st_size <= 4096 for p in parts)
    assert parts[0].read_bytes()[:128].split()[2:5] == [b"000001", b"of", f"{len(parts):06d}".encode()]
    # The parts reassemble into the plain bundle by hand, as the docs say.
    joined = tmp_path / "joined.tar.zst"
    joined.write_bytes(b"".join(p.read_bytes()[128:] for p in parts))
    assert [i.name for i, _ in members(joined)] == [i.name for i, _ in members(src.root / "full.tar.zst")]

    before = state(home)
    for lost in (parts[1], parts[-1]):
        aside = tmp_path / lost.name
        lost.rename(aside)
        r = cli("import", str(parts[0]))
        assert r.code == 20 and str(lost) in r.err and "missing" in r.err, r.err
        assert_unchanged(home, before)
        aside.rename(lost)
    r = cli("import", str(out) + ".part*")  # a glob, as typed without a shell
    assert r.code == 0, r.err
    assert cli("path", TEXT1).code == 0


# -- signatures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(src: Src) -> tuple[Path, Path]:
    k1, k2 = src.root / "k1", src.root / "k2"
    for k in (k1, k2):
        r = src.cli("keygen", str(k))
        assert r.code == 0, r.err
        assert oct(k.stat().st_mode & 0o777) == "0o600" and Path(f"{k}.pub").read_text().startswith("ssh-ed25519 ")
    return k1, k2


@pytest.fixture(scope="module")
def signed(src: Src, keys: tuple[Path, Path]) -> Path:
    out = src.root / "signed.tar.zst"
    r = src.cli("export", MYMUL, TEXT1, "--sign", str(keys[0]), "-o", str(out))
    assert r.code == 0, r.err
    assert "signed by SHA256:" in r.out
    return out


def test_signed_bundle_verifies_with_ssh_keygen(signed: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    assert shutil.which("ssh-keygen"), "ssh-keygen (openssh-client) is required: add it to .ci/run"
    items = members(signed)
    assert [i.name for i, _ in items[:2]] == ["manifest.json", "manifest.json.sig"]
    (tmp_path / "manifest.json").write_bytes(items[0][1])
    (tmp_path / "manifest.json.sig").write_bytes(items[1][1])
    allowed = tmp_path / "allowed_signers"
    for key, expect in ((keys[0], 0), (keys[1], 255)):
        allowed.write_text("cachemgr " + Path(f"{key}.pub").read_text())
        with open(tmp_path / "manifest.json", "rb") as fh:
            proc = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "cachemgr",
                                   "-n", "cachemgr-bundle", "-s", str(tmp_path / "manifest.json.sig")],
                                  stdin=fh, capture_output=True, text=True, timeout=30)
        assert proc.returncode == expect, proc.stdout + proc.stderr
        if expect == 0:
            assert "Good" in proc.stdout + proc.stderr


def test_signature_policy(src: Src, signed: Path, keys: tuple[Path, Path], airgap: tuple[Cli, Path],
                          tmp_path: Path) -> None:
    cli, home = airgap
    before = state(home)
    k1pub, k2pub = (f"{k}.pub" for k in keys)
    refusals = [
        (cli("import", str(signed), "--require-signature", k2pub), "not a trusted key"),
        (cli("import", str(src.root / "full.tar.zst"), "--require-signature", k1pub), "not signed"),
        (cli("import", str(src.root / "full.tar.zst"), env={"CACHEMGR_TRUSTED_KEYS": k1pub}), "not signed"),
    ]
    items = members(signed)
    doc = json.loads(items[0][1])
    doc["refs"][0]["aliases"].append("https://evil.example/model")
    forged = write_bundle(tmp_path / "forged.tar.zst", [(items[0][0], json.dumps(doc).encode())] + items[1:])
    refusals.append((cli("import", str(forged), "--require-signature", k1pub), "does not match"))
    for r, needle in refusals:
        assert r.code == 22 and needle in r.err, r.err
        assert_unchanged(home, before)

    # ssh-keygen is there: the keys fixture asserts it.
    fingerprint = subprocess.run(["ssh-keygen", "-lf", k1pub], capture_output=True, text=True).stdout.split()[1]
    r = cli("import", str(signed), "--require-signature", k1pub)
    assert r.code == 0, r.err
    assert "signature: good" in r.out and "(trusted key)" in r.out and fingerprint in r.out


def test_export_pinned_with_pins(src: Src, tmp_path: Path) -> None:
    """--pinned exports exactly the pinned models; --with-pins carries the pins across."""
    home = tmp_path / "pinsrc"
    cli = src.home_cli(home)
    bundle = src.root / "full.tar.zst"
    assert cli("import", str(bundle)).code == 0
    assert cli("pin", TEXT1, "--reason", "production").code == 0
    out = tmp_path / "pinned.tar.zst"
    r = cli("export", "--pinned", "--with-pins", "-o", str(out), "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["models"] == [TEXT1] and doc["pins"] == 1
    receiver = src.home_cli(tmp_path / "dst")
    r = receiver("--offline", "import", str(out), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["pins_added"] == [TEXT1]
    listed = json.loads(receiver("--offline", "pins", "--json", "--no-check").out)["pins"]
    assert [(p["asked"], p["reason"], p["state"]) for p in listed] == [(TEXT1, "production", "ok")]
    # Without --with-pins nothing is pinned on the other side.
    plain = tmp_path / "plain.tar.zst"
    assert cli("export", "--pinned", "-o", str(plain)).code == 0
    other = src.home_cli(tmp_path / "dst2")
    assert json.loads(other("import", str(plain), "--json").out)["results"][0]["pins_added"] == []
