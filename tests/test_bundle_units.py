"""Bundle building blocks in-process: pure planning, manifest checks, tar records, parts, SSHSIG."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachemgr import signing
from cachemgr.bundle.container import (
    PART_HEADER_SIZE,
    PayloadReader,
    Sink,
    collect_segments,
    parse_trailer,
    read_tail,
    trailer,
)
from cachemgr.bundle.format import BlobEntry, BundleManifest, Inventory
from cachemgr.bundle.plan import LocalState, merge_ref, plan_blobs, plan_import
from cachemgr.bundle.tarstream import TarReader, end_of_archive, member_header, padding
from cachemgr.errors import (
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    MissingPartError,
    NotABundleError,
    SignatureError,
    TruncatedBundleError,
    UnsafeArchiveError,
)
from cachemgr.settings import load_settings
from cachemgr.store.manifest import FileEntry, Manifest
from cachemgr.store.refs import Ref


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model(*names: str) -> Manifest:
    return Manifest.build([FileEntry(n, 0o644, len(n), h(n)) for n in names], set())


def ref(handle: str, m: Manifest, aliases: tuple[str, ...] = ()) -> Ref:
    return Ref(handle=handle, manifest=m.digest, aliases=(handle, *aliases), size=m.size, files=len(m.files))


def bundle_of(refs: list[Ref], manifests: list[Manifest], have: Inventory | None = None) -> BundleManifest:
    by_digest = {m.digest: m for m in manifests}
    return BundleManifest(1.0, "cachemgr test", tuple(refs), by_digest, plan_blobs(refs, by_digest, have))


A = model("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001", "assets/vocab.txt")
B = model("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001", "assets/vocab.txt",
          "extra")


# -- planning --------------------------------------------------------------------------------
def test_plan_blobs_dedups_and_leaves_out_what_the_receiver_has() -> None:
    refs = [ref("a", A), ref("b", B)]
    blobs = plan_blobs(refs, {A.digest: A, B.digest: B}, None)
    assert [b.sha256 for b in blobs] == sorted(A.blob_digests() | B.blob_digests())
    assert all(b.packed for b in blobs)
    have = Inventory(0.0, frozenset({A.digest}), frozenset(A.blob_digests()))
    delta = plan_blobs(refs, {A.digest: A, B.digest: B}, have)
    assert {b.sha256 for b in delta if b.packed} == {h("extra")}
    assert {b.sha256 for b in delta} == A.blob_digests() | B.blob_digests()  # still the full state


def test_plan_import_statuses_and_missing_base() -> None:
    bundle = bundle_of([ref("a", A), ref("b", B, ("b-alias",))], [A, B],
                       Inventory(0.0, frozenset(), frozenset(A.blob_digests())))
    empty = LocalState(frozenset(), frozenset(), frozenset(), {})
    plan = plan_import(bundle, empty)
    assert {b.sha256 for b in plan.missing} == A.blob_digests()
    held = LocalState(frozenset(A.blob_digests()), frozenset({A.digest}), frozenset({A.digest}),
                      {"a": ref("a", A), "b": ref("b", A, ("old-alias",))})
    plan = plan_import(bundle, held)
    assert not plan.missing and plan.write == {h("extra")} and plan.verify_only == frozenset()
    assert plan.by_status("unchanged") == ["a"] and plan.by_status("updated") == ["b"]
    updated = plan.changes[1].ref
    assert updated.manifest == B.digest and set(updated.aliases) == {"b", "b-alias", "old-alias"}
    assert plan.new_manifests == (B.digest,) and not plan.noop
    done = LocalState(frozenset(A.blob_digests() | B.blob_digests()), frozenset({A.digest, B.digest}),
                      frozenset({A.digest, B.digest}), {"a": ref("a", A), "b": updated})
    assert plan_import(bundle, done).noop


def test_merge_ref_keeps_local_aliases_and_reports_new_ones() -> None:
    local = ref("a", A, ("x",))
    assert merge_ref(ref("a", A), local).status == "unchanged"
    change = merge_ref(ref("a", A, ("y",)), local)
    assert change.status == "updated" and set(change.ref.aliases) == {"a", "x", "y"}


# -- the bundle manifest ----------------------------------------------------------------------------
def test_bundle_manifest_round_trip_and_checks() -> None:
    good = bundle_of([ref("a", A)], [A])
    assert BundleManifest.from_bytes(good.to_bytes(), "b") == good
    doc = json.loads(good.to_bytes())

    def parsed(d: dict[str, object]) -> BundleManifest:
        return BundleManifest.from_bytes(json.dumps(d).encode(), "b")

    with pytest.raises(NotABundleError):
        BundleManifest.from_bytes(b"\x00garbage", "b")
    with pytest.raises(NotABundleError):
        parsed({"kind": "something-else", "format": 1})
    with pytest.raises(BundleFormatError, match="upgrade cachemgr"):
        parsed({**doc, "format": 2})
    tampered = json.loads(json.dumps(doc))
    tampered["manifests"][A.digest]["files"][0][2] += 1
    with pytest.raises(BundleIntegrityError):
        parsed(tampered)
    extra_blob = json.loads(json.dumps(doc))
    extra_blob["blobs"].append({"sha256": h("zzz"), "size": 3, "packed": True})
    with pytest.raises(BundleError, match="disagrees"):
        parsed(extra_blob)
    evil = model("../../etc/passwd")
    with pytest.raises(UnsafeArchiveError):
        BundleManifest.from_bytes(bundle_of([ref("e", evil)], [evil]).to_bytes(), "b")
    with pytest.raises(BundleError, match="does not carry"):
        parsed({**doc, "refs": [replace(ref("a", A), manifest=h("nope")).to_json()]})


# -- tar records -----------------------------------------------------------------------------------
def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for name, body in members:
        out += member_header(name, len(body), 0) + body + padding(len(body))
    return out + end_of_archive(len(out))


def reader_over(data: bytes, chunk: int) -> TarReader:
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return TarReader(lambda: pieces.pop(0) if pieces else b"", "t")


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), max_size=5), chunk=st.integers(1, 4096))
def test_tar_round_trip_any_sizes_any_chunking(sizes: list[int], chunk: int) -> None:
    members = [(f"blobs/{i}", os.urandom(n)) for i, n in enumerate(sizes)]
    reader = reader_over(tar_bytes(members), chunk)
    got = []
    while (m := reader.next()) is not None:
        got.append((m.name, b"".join(reader.data(m))))
    assert got == members


def test_tar_reader_refuses_truncation_and_trailing_data() -> None:
    data = tar_bytes([("a", b"x" * 1000)])
    r = reader_over(data[:700], 100)
    m = r.next()
    assert m is not None
    with pytest.raises(TruncatedBundleError):
        b"".join(r.data(m))
    r = reader_over(data + b"junk", 512)
    m = r.next()
    assert m is not None
    b"".join(r.data(m))
    with pytest.raises(BundleError, match="extra data"):
        r.next()


# -- container: trailer and parts -------------------------------------------------------------------
def test_trailer_round_trip() -> None:
    assert parse_trailer(trailer(12345)) == 12345
    assert parse_trailer(b"\x00" + trailer(12345)[1:]) is None
    assert parse_trailer(trailer(12345)[:-1]) is None
    assert parse_trailer(b"\x00" * 24) is None


def test_parts_reassemble_and_missing_ones_are_named(tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    sink = Sink(tmp_path / "b.tar.zst", 8192)
    for i in range(0, len(payload), 3000):
        sink.write(payload[i:i + 3000])
    parts = sink.commit()
    assert len(parts) == 7 and all(p.stat().st_size <= 8192 for p in parts)
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(NotABundleError):  # random bytes: not zstd, but the parts themselves are found
        collect_segments([parts[0]])
    # With zstd magic in front the segments chain back into the payload.
    (tmp_path / "z").mkdir()
    sink = Sink(tmp_path / "z" / "b.tar.zst", 8192)
    sink.write(b"\x28\xb5\x2f\xfd" + payload)
    parts = sink.commit()
    segments, where = collect_segments([parts[2]])
    reader = PayloadReader(segments, sum(s.length for s in segments))
    got = b"".join(iter(lambda: reader.read(5000), b""))
    assert got == b"\x28\xb5\x2f\xfd" + payload and where == str(tmp_path / "z" / "b.tar.zst")
    assert read_tail(segments, 10) == payload[-10:]
    parts[-1].unlink()
    with pytest.raises(MissingPartError, match=str(parts[-1]).replace(".", r"\.")):
        collect_segments([parts[0]])
    with open(parts[1], "r+b") as fh:  # a part cut short
        fh.truncate(PART_HEADER_SIZE + 10)
    with pytest.raises(BundleError):
        collect_segments(parts[:-1])


# -- signatures ------------------------------------------------------------------------------------
def test_sshsig_round_trip_and_interop_with_ssh_keygen(tmp_path: Path) -> None:
    line = signing.generate_keypair(tmp_path / "k")
    key = signing.load_private_key(tmp_path / "k")
    sig = signing.sign(b"message", key)
    assert signing.verify(b"message", sig, "m") == line
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(b"messagE", sig, "m")
    with pytest.raises(SignatureError, match="malformed"):
        signing.verify(b"message", sig.replace(b"SIGNATURE", b"SIGNATUR"), "m")
    with pytest.raises(ConfigError, match="already exists"):
        signing.generate_keypair(tmp_path / "k")
    # ssh-keygen signs, we verify (the other direction is in test_bundle.py).
    assert shutil.which("ssh-keygen"), "ssh-keygen (openssh-client) is required: add it to .ci/run"
    (tmp_path / "msg").write_bytes(b"message")
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(tmp_path / "k"), "-n", signing.NAMESPACE,
                    str(tmp_path / "msg")], check=True, capture_output=True, timeout=30)
    assert signing.verify(b"message", (tmp_path / "msg.sig").read_bytes(), "m") == line


def test_trusted_keys_from_config_and_env(tmp_path: Path) -> None:
    line = signing.generate_keypair(tmp_path / "k")
    other = signing.generate_keypair(tmp_path / "o", comment="other")
    config = tmp_path / "config.toml"
    config.write_text(f'trusted_keys = ["{tmp_path / "k.pub"}", "{other} inline-comment"]\n')
    assert load_settings({}, config).trusted_keys == (line, other)
    env = {"CACHEMGR_TRUSTED_KEYS": f"{tmp_path / 'o.pub'}"}
    assert load_settings(env, config).trusted_keys == (other,)
    (tmp_path / "bad.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E= x\n")
    with pytest.raises(ConfigError, match="ed25519"):
        load_settings({"CACHEMGR_TRUSTED_KEYS": str(tmp_path / "bad.pub")})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"CACHEMGR_TRUSTED_KEYS": str(tmp_path / "missing.pub")})


def test_blob_entry_member_name() -> None:
    assert BlobEntry(h("x"), 1, True).member == "blobs/" + h("x")


def test_bundle_exit_codes() -> None:
    from cachemgr.errors import MissingBaseError, exit_code_for

    assert [exit_code_for(e("x")) for e in (BundleError, NotABundleError, TruncatedBundleError, MissingPartError,
                                            BundleFormatError, BundleIntegrityError, MissingBaseError,
                                            SignatureError)] == [20, 20, 20, 20, 20, 8, 21, 22]
