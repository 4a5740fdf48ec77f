"""A registry with htpasswd auth, and OCI image layouts: export for skopeo, hostile ones refused.

The source store is filled with one model from the fake origin; the registries are real
Debian docker-registry (distribution 2.8) processes on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.env import BASE_ENV
from tests.support.origin import FakeOrigin
from tests.support.registry import LocalRegistry
from tests.support.token_server import TokenServer

MYMUL = "https://tfhub.dev/google/mymul/1"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory, _origin_server: FakeOrigin) -> Cli:
    root = tmp_path_factory.mktemp("oci-src")
    _origin_server.reset()
    env = dict(BASE_ENV, CACHEMGR_MIRRORS=_origin_server.mirrors, CACHEMGR_RETRIES="1", CACHEMGR_BACKOFF="0.05",
               XDG_CONFIG_HOME=str(root / "xdg"), REGISTRY_AUTH_FILE=str(root / "none.json"))
    cli = Cli(root / "home", env)
    r = cli("pull", MYMUL)
    assert r.code == 0, r.err
    return cli


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("oci-locked"), user="alice", password="s3cret") as registry:
        yield registry


def test_htpasswd_registry_needs_credentials_and_takes_them_from_a_docker_config(
        src: Cli, locked: LocalRegistry, tmp_path: Path) -> None:
    r = src("push", MYMUL, "--to", locked.url("models"))
    assert r.code == 7, r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert "wants a user name and password" in r.err and "docker login" in r.err and "REGISTRY_AUTH_FILE" in r.err
    wrong = locked.auth_file(tmp_path / "wrong.json", password="nope")
    r = src("push", MYMUL, "--to", locked.url("models"), env={"REGISTRY_AUTH_FILE": str(wrong)})
    assert r.code == 7 and "refused the credentials" in r.err, r.err
    good = locked.auth_file(tmp_path / "config.json")
    r = src("push", MYMUL, "--to", locked.url("models"), "--json", env={"REGISTRY_AUTH_FILE": str(good)})
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["reference"] == f"oci://{locked.host}/models/google/mymul:1"
    # DOCKER_CONFIG works as docker's own lookup does, and a pull with it gives the same model
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    locked.auth_file(docker_dir / "config.json")
    env = {k: v for k, v in src.env.items() if k != "REGISTRY_AUTH_FILE"}
    fresh = Cli(tmp_path / "fresh", dict(env, DOCKER_CONFIG=str(docker_dir)))
    r = fresh("pull", f"{locked.url('models')}/google/mymul:1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["manifest"] == json.loads(src("info", MYMUL, "--json").out)["manifest"]


def test_export_an_oci_layout_that_skopeo_pushes(src: Cli, tmp_path: Path) -> None:
    assert shutil.which("skopeo"), "skopeo (Debian package skopeo) is required"
    layout = tmp_path / "layout"
    r = src("export", MYMUL, "--format", "oci-layout", "-o", str(layout))
    assert r.code == 0, r.err
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    with LocalRegistry(tmp_path / "registry") as registry:
        dest = f"docker://{registry.host}/carried/google/mymul:1"
        r2 = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:google/mymul:1", dest],
                            capture_output=True, text=True)
        assert r2.returncode == 0, r2.stderr
        fresh = Cli(tmp_path / "fresh", src.env)
        r3 = fresh("pull", f"{registry.url('carried')}/google/mymul:1", "--json")
        assert r3.code == 0, r3.err
        assert json.loads(r3.out)["results"][0]["canonical"] == MYMUL
    again = src("export", MYMUL, "--format", "oci-layout", "-o", str(layout))
    assert again.code == 2 and "not an empty directory" in again.err
    mixed = src("export", MYMUL, "--format", "oci-layout", "-o", str(tmp_path / "x"), "--split-size", "1M")
    assert mixed.code == 2 and "--split-size is for bundles" in mixed.err and not (tmp_path / "x").exists()


def _layout(src: Cli, tmp_path: Path, name: str) -> Path:
    layout = tmp_path / name
    r = src("export", MYMUL, "--format", "oci-layout", "-o", str(layout))
    assert r.code == 0, r.err
    return layout


def _entry(layout: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return index, manifest


def _rewrite_manifest(layout: Path, manifest: dict[str, Any]) -> None:
    """Store an edited artifact manifest under its new digest and point index.json at it."""
    index, _ = _entry(layout)
    body = json.dumps(manifest).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(body)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(body))
    (layout / "index.json").unlink()
    (layout / "index.json").write_text(json.dumps(index))


def _refused(src: Cli, layout: Path, tmp_path: Path, code: int, words: str) -> None:
    fresh = Cli(tmp_path / f"home-{layout.name}", src.env)
    r = fresh("import", str(layout))
    assert r.code == code, (r.code, r.err)
    assert words in r.err and "Traceback" not in r.err, r.err
    assert not list((fresh.home / "refs").glob("*.json"))
    assert not list((fresh.home / "view").iterdir()) if (fresh.home / "view").exists() else True
    assert not list((fresh.home / "snapshots").iterdir()) if (fresh.home / "snapshots").exists() else True


def test_hostile_layouts_are_refused_and_leave_nothing_visible(src: Cli, tmp_path: Path) -> None:
    # a blob whose bytes changed (replaced, not edited: the layout's blobs are links to the store's)
    bad = _layout(src, tmp_path, "bad-digest")
    _, manifest = _entry(bad)
    data = next(x for x in manifest["layers"] if x["annotations"]["org.cncf.model.filepath"].startswith("variables/"
                                                                                                         "variables.data"))
    blob = bad / "blobs/sha256" / data["digest"][7:]
    body = bytearray(blob.read_bytes())
    body[0] ^= 0xFF
    blob.unlink()
    blob.write_bytes(bytes(body))
    _refused(src, bad, tmp_path, 8, "does not match its size or sha256")

    # index.json naming a path instead of a digest
    trav = _layout(src, tmp_path, "traversal")
    index, _ = _entry(trav)
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (trav / "index.json").unlink()
    (trav / "index.json").write_text(json.dumps(index))
    _refused(src, trav, tmp_path, 9, "not sha256:<64 hex digits>")

    # a layer whose file path leaves the model
    escape = _layout(src, tmp_path, "escape")
    _, manifest = _entry(escape)
    manifest["layers"][0]["annotations"]["org.cncf.model.filepath"] = "../../evil"
    del manifest["annotations"]["io.cachemgr.manifest"]  # no digest to miss: the path check itself
    _rewrite_manifest(escape, manifest)
    _refused(src, escape, tmp_path, 9, "not a normal relative path")

    # the annotations promise one manifest, the layers describe another (a dropped file)
    dropped = _layout(src, tmp_path, "dropped")
    _, manifest = _entry(dropped)
    manifest["layers"] = [x for x in manifest["layers"] if x is not manifest["layers"][-1]]
    _rewrite_manifest(dropped, manifest)
    _refused(src, dropped, tmp_path, 9, "refused")

    # a blob file that is a symlink out of the layout
    link = _layout(src, tmp_path, "symlink")
    _, manifest = _entry(link)
    target = link / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    target.unlink()
    target.symlink_to("/etc/hostname")
    _refused(src, link, tmp_path, 9, "not a plain file")


def test_bearer_token_flow_with_the_realm_on_another_host(src: Cli, tmp_path: Path) -> None:
    with TokenServer(tmp_path, "alice", "s3cret") as tokens, \
            LocalRegistry(tmp_path / "reg", user="alice", password="s3cret", auth_yaml=tokens.auth_yaml()) as reg:
        r = src("push", MYMUL, "--to", reg.url("tok"))
        assert r.code == 7 and "token server" in r.err and "refused anonymous access" in r.err, r.err
        good = reg.auth_file(tmp_path / "config.json")
        r = src("push", MYMUL, "--to", reg.url("tok"), "--json", env={"REGISTRY_AUTH_FILE": str(good)})
        assert r.code == 0, r.err
        asked = [x for x in tokens.requests if x["authorized"]]
        assert asked and all(x["service"] == "cachemgr-registry" for x in asked)
        assert any("repository:tok/google/mymul:pull,push" in x["scopes"] for x in asked), tokens.requests
        fresh = Cli(tmp_path / "fresh", dict(src.env, REGISTRY_AUTH_FILE=str(good)))
        r = fresh("pull", f"{reg.url('tok')}/google/mymul:1", "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["results"][0]["canonical"] == MYMUL


def test_layout_import_dry_run_writes_nothing_and_a_second_import_changes_nothing(src: Cli, tmp_path: Path) -> None:
    layout = _layout(src, tmp_path, "plain")
    fresh = Cli(tmp_path / "home-plain", src.env)
    r = fresh("import", "--dry-run", str(layout))
    assert r.code == 0 and "would import" in r.out and "1 added" in r.out, (r.out, r.err)
    assert not fresh.home.exists()
    r = fresh("import", str(layout), "--json")
    assert r.code == 0, r.err
    first = json.loads(r.out)["results"][0]
    assert first["added"] == [MYMUL] and first["blobs_added"] == first["blobs_verified"] > 0
    r = fresh("import", str(layout), "--json")
    again = json.loads(r.out)["results"][0]
    assert r.code == 0 and again["unchanged"] == [MYMUL] and again["blobs_added"] == 0
    assert json.loads(fresh("info", MYMUL, "--json").out)["manifest"] == json.loads(src("info", MYMUL, "--json").out)[
        "manifest"]
