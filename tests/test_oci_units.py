"""The pure parts of cachemgr.oci: the handle -> repository:tag mapping, references, challenges,
the docker config.json reader, and the artifact round trip through the one manifest check."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from cachemgr.errors import ConfigError, UnsafeManifestError, UsageError
from cachemgr.oci.auth import parse_challenge
from cachemgr.oci.client import is_insecure
from cachemgr.oci.credentials import Credentials, find_credentials
from cachemgr.oci.modelpack import ARTIFACT_TYPE, build_artifact, parse_artifact
from cachemgr.oci.reference import parse_reference, parse_registry, reference_for
from cachemgr.settings import Settings
from cachemgr.store.manifest import FileEntry, Limits, Manifest
from cachemgr.store.refs import Ref

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
REG = parse_registry("oci://reg.example:5000/models")


@pytest.mark.parametrize(("handle", "expected"), [
    ("https://tfhub.dev/google/mul/1", "models/google/mul:1"),
    ("https://tfhub.dev/google/mul/1/", "models/google/mul:1"),
    ("https://hub.tensorflow.google.cn/google/x/2", "models/hub.tensorflow.google.cn/google/x:2"),
    ("http://models.internal:8000/a/b/3", "models/models.internal-8000/a/b:3"),
])
def test_documented_mapping(handle: str, expected: str) -> None:
    ref = reference_for(REG, handle)
    assert f"{ref.repository}:{ref.tag}" == expected and ref.host == "reg.example:5000"


def test_forbidden_components_are_escaped_and_stay_distinct() -> None:
    a = reference_for(REG, "https://www.kaggle.com/models/google/mymul/tensorFlow2/mymul/1")
    b = reference_for(REG, "https://www.kaggle.com/models/google/mymul/tensorflow2/mymul/1")
    assert a.repository != b.repository
    for ref in (a, b):
        assert all(_COMPONENT.match(c) for c in ref.repository.split("/")), ref
    assert "tensorflow2-x" in a.repository and b.repository.endswith("/tensorflow2/mymul")


def test_references_parse_and_bad_ones_name_the_fix() -> None:
    ref = parse_reference("oci://127.0.0.1:5000/site/google/mymul:1")
    assert (ref.host, ref.repository, ref.tag) == ("127.0.0.1:5000", "site/google/mymul", "1")
    digest = "sha256:" + "a" * 64
    assert parse_reference(f"oci://h/r@{digest}").tag == digest
    for bad in ("oci://h/repo", "oci://h/Repo:1", "oci://h/../x:1", "http://h/r:1", "oci://h/r:-bad", "oci://h/r@md5:x"):
        with pytest.raises(UsageError, match="oci://HOST"):
            parse_reference(bad)


def test_plain_http_only_for_listed_hosts_and_localhost() -> None:
    s = Settings(insecure_registries=("reg.lan:5000", "other"))
    assert is_insecure(s, "127.0.0.1:5000") and is_insecure(s, "localhost") and is_insecure(s, "reg.lan:5000")
    assert is_insecure(s, "other:443")
    assert not is_insecure(s, "reg.lan:5001") and not is_insecure(s, "registry.example")


def test_challenges_and_docker_config(tmp_path: Path) -> None:
    scheme, params = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"')
    assert scheme == "bearer" and params == {"realm": "https://auth.example/token", "service": "reg",
                                             "scope": "repository:a:pull"}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://reg.example:5000/v1/": {"auth": base64.b64encode(b"alice:pw:with:colons").decode()},
        "other": {"username": "bob", "password": "x"}}}))
    def creds(path: Path, host: str) -> Credentials | None:
        return find_credentials(path, host, 5.0).credentials

    assert creds(cfg, "reg.example:5000") == Credentials("alice", "pw:with:colons")
    assert creds(cfg, "other") == Credentials("bob", "x")
    assert creds(cfg, "nobody") is None and creds(tmp_path / "absent.json", "x") is None
    cfg.write_text(json.dumps({"auths": {"tok": {"identitytoken": "r3fr3sh"}}, "credHelpers": {"x": "no such/name"}}))
    assert creds(cfg, "tok") == Credentials("<token>", "r3fr3sh") and creds(cfg, "tok").identity_token == "r3fr3sh"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="not the NAME of a credential helper"):
        creds(cfg, "x")
    cfg.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        creds(cfg, "x")


def _model() -> tuple[Manifest, Ref]:
    files = [FileEntry("saved_model.pb", 0o644, 3, "a" * 64), FileEntry("variables/variables.index", 0o644, 2,
                                                                        "b" * 64),
             FileEntry("variables/variables.data-00000-of-00001", 0o600, 5, "c" * 64)]
    manifest = Manifest.build(files, {"assets", "variables"})
    ref = Ref("https://tfhub.dev/google/mul/1", manifest.digest, ("https://tfhub.dev/google/mul/1", "x"), 10, 3)
    return manifest, ref


def test_artifact_round_trip_keeps_modes_dirs_and_handle() -> None:
    manifest, ref = _model()
    art = build_artifact(manifest, ref)
    assert art == build_artifact(manifest, ref)  # deterministic
    doc = json.loads(art.manifest)
    assert doc["artifactType"] == ARTIFACT_TYPE and len(doc["layers"]) == 3
    back = parse_artifact(art.manifest, "t", Limits(1 << 30, 1000))
    assert back.manifest == manifest and back.handle == ref.handle and back.aliases == ref.aliases
    assert "assets" in back.manifest.dirs


def test_artifact_that_lies_is_refused_by_the_manifest_check() -> None:
    manifest, ref = _model()
    doc = json.loads(build_artifact(manifest, ref).manifest)
    doc["layers"][2]["annotations"]["org.cncf.model.file.metadata+json"] = json.dumps({"mode": 0o4755})
    with pytest.raises(UnsafeManifestError, match="hashes to"):
        parse_artifact(json.dumps(doc).encode(), "t", Limits(1 << 30, 1000))
    del doc["annotations"]["io.cachemgr.manifest"]
    with pytest.raises(UnsafeManifestError, match="only permission bits"):
        parse_artifact(json.dumps(doc).encode(), "t", Limits(1 << 30, 1000))
    with pytest.raises(UnsafeManifestError, match="max_model_size"):
        parse_artifact(build_artifact(manifest, ref).manifest, "t", Limits(5, 1000))
