"""Models in a real OCI registry (Debian docker-registry, distribution 2.8, on 127.0.0.1).

One source store (pulled once per module from the fake origin) pushes to one registry per
module; each test reads back into its own fresh store. skopeo reads and copies what we push.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bundles import run_offline
from tests.support.cli import Cli
from tests.support.daemons import Daemon
from tests.support.env import BASE_ENV, REPO
from tests.support.origin import FakeOrigin
from tests.support.registry import LocalRegistry

MYMUL = "https://tfhub.dev/google/mymul/1"
MYMUL_KAGGLE = "https://www.kaggle.com/models/google/mymul/frameworks/tensorFlow2/variations/mymul/versions/1"
TEXT1 = "https://tfhub.dev/google/text-embed/1"
TEXT2 = "https://tfhub.dev/google/text-embed/2"
ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"


class Site:
    """The connected side (a store with three models), a registry, and what the first push said."""

    def __init__(self, root: Path, origin: FakeOrigin, registry: LocalRegistry) -> None:
        self.root = root
        self.origin = origin
        self.registry = registry
        self.env = dict(BASE_ENV, CACHEMGR_MIRRORS=origin.mirrors, CACHEMGR_RETRIES="2", CACHEMGR_BACKOFF="0.05",
                        XDG_CONFIG_HOME=str(root / "xdg"), REGISTRY_AUTH_FILE=str(root / "no-auth.json"))
        self.cli = Cli(root / "src-home", self.env)
        self.push_report: list[dict[str, object]] = []

    def fresh(self, name: str, **env: str) -> Cli:
        return Cli(self.root / name, {**self.env, **env})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, _origin_server: FakeOrigin) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("oci-site")
    _origin_server.reset()
    with LocalRegistry(root / "registry") as registry:
        s = Site(root, _origin_server, registry)
        r = s.cli("pull", MYMUL, TEXT1, TEXT2)
        assert r.code == 0, r.err
        r = s.cli("push", TEXT1, TEXT2, MYMUL, "--to", registry.url("site"), "--json")
        assert r.code == 0, r.err
        s.push_report = json.loads(r.out)["results"]
        yield s


def _manifest(cli: Cli, handle: str) -> dict[str, object]:
    r = cli("info", handle, "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    return json.loads(Path(cli.home / "manifests/sha256" / f"{info['manifest']}.json").read_text())  # type: ignore[no-any-return]


def _blobs(cli: Cli, handle: str) -> set[str]:
    return {row[3] for row in _manifest(cli, handle)["files"]}  # type: ignore[attr-defined]


def test_push_sends_shared_blobs_once(site: Site) -> None:
    shared = _blobs(site.cli, TEXT1) & _blobs(site.cli, TEXT2)
    assert shared, "the two text-embed versions share vocab.txt"
    v1, v2, mymul = site.push_report
    assert v1["reference"] == f"oci://{site.registry.host}/site/google/text-embed:1"
    assert v2["reference"] == f"oci://{site.registry.host}/site/google/text-embed:2"
    assert v1["uploaded"] == v1["blobs"] and v1["present"] == 0
    assert v2["present"] == len(shared) and v2["uploaded"] == int(v2["blobs"]) - len(shared)  # type: ignore[call-overload]
    uploads = site.registry.uploads()  # the registry's own word
    every = _blobs(site.cli, TEXT1) | _blobs(site.cli, TEXT2) | _blobs(site.cli, MYMUL)
    assert every <= set(uploads)
    assert all(uploads[d] == 1 for d in every), uploads
    # pushing again sends no blob at all
    r = site.cli("push", TEXT2, "--to", site.registry.url("site"), "--json")
    assert r.code == 0, r.err
    again = json.loads(r.out)["results"][0]
    assert again["uploaded"] == 0 and again["present"] == again["blobs"]


def test_a_copy_in_another_repository_is_mounted_not_uploaded(site: Site) -> None:
    other = "https://tfhub.dev/other/text-embed/1"
    r = site.cli("add", other, site.cli("path", TEXT1).out.strip())
    assert r.code == 0, r.err
    before = site.registry.uploads()
    r = site.cli("push", TEXT1, other, "--to", site.registry.url("site"), "--json")
    assert r.code == 0, r.err
    first, second = json.loads(r.out)["results"]
    assert first["present"] == first["blobs"] and first["uploaded"] == 0
    assert second["reference"].endswith("/site/other/text-embed:1")
    assert second["mounted"] == second["blobs"] and second["uploaded"] == 0, second
    new = site.registry.uploads() - before
    assert len(new) == 1 and not set(new) & _blobs(site.cli, TEXT1), new  # only its config travelled
    fresh = site.fresh("mounted")
    r = fresh("pull", f"{site.registry.url('site')}/other/text-embed:1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["canonical"] == other


def test_skopeo_sees_a_modelpack_artifact_with_a_layer_per_file(site: Site) -> None:
    assert shutil.which("skopeo"), "skopeo (Debian package skopeo) is required"
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                        f"docker://{site.registry.host}/site/google/mymul:1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["artifactType"] == ARTIFACT
    assert doc["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    files = _manifest(site.cli, MYMUL)["files"]
    by_path = {layer["annotations"]["org.cncf.model.filepath"]: layer for layer in doc["layers"]}
    assert sorted(by_path) == sorted(row[0] for row in files)  # type: ignore[attr-defined]
    for path, _mode, size, sha in files:  # type: ignore[attr-defined]
        layer = by_path[path]
        assert layer["digest"] == f"sha256:{sha}" and layer["size"] == size  # raw: the store's own blob
        assert layer["mediaType"].endswith(".v1.raw")
        assert layer["annotations"]["org.opencontainers.image.title"] == path
    assert doc["annotations"]["io.cachemgr.handle"] == MYMUL
    assert MYMUL_KAGGLE in json.loads(doc["annotations"]["io.cachemgr.aliases"])


def _offline_load(site: Site, home: Path) -> None:
    assert shutil.which("unshare"), "unshare (util-linux) is required: .ci/run installs it"
    host, port = site.origin.base.removeprefix("http://").split(":")
    job = run_offline([sys.executable, str(REPO / "tests" / "offline_hub_job.py"), MYMUL, MYMUL_KAGGLE, TEXT1,
                       host, port], dict(BASE_ENV, TFHUB_CACHE_DIR=str(home / "view")))
    assert job.returncode == 0, job.stderr[-3000:]
    out = json.loads(job.stdout.split("RESULT ", 1)[1])
    assert out["network"].startswith("unreachable")
    assert out["load"] == [6.0] and out["load_kaggle_alias"] == [3.0]
    assert out["text_shape"][0] == 2


def test_skopeo_copy_to_a_layout_then_import_then_offline_load(site: Site, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    for repo in ("google/mymul:1", "google/text-embed:1"):
        r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                            f"docker://{site.registry.host}/site/{repo}", f"oci:{layout}:{repo}"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    home = tmp_path / "airgap"
    env = dict(BASE_ENV, CACHEMGR_HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    imp = run_offline([sys.executable, "-m", "cachemgr", "--offline", "import", str(layout)], env)
    assert imp.returncode == 0, imp.stderr
    assert "2 added" in imp.stdout, imp.stdout
    _offline_load(site, home)


def test_pull_through_an_oci_upstream_with_the_origin_down(site: Site) -> None:
    cli = site.fresh("via-upstream", CACHEMGR_UPSTREAMS=site.registry.url("site"))
    site.origin.down = True
    try:
        r = cli("pull", MYMUL, TEXT1, "--json")
    finally:
        site.origin.down = False
    assert r.code == 0, r.err
    results = json.loads(r.out)["results"]
    assert [x["status"] for x in results] == ["pulled", "pulled"]
    assert all(x["manifest"] == json.loads(site.cli("info", x["handle"], "--json").out)["manifest"]
               for x in results)
    assert MYMUL_KAGGLE in results[0]["aliases"]
    _offline_load(site, cli.home)


def test_a_daemon_fills_from_an_oci_upstream_with_the_origin_down(site: Site) -> None:
    home = site.root / "daemon-home"
    d = Daemon(home, dict(site.env, CACHEMGR_UPSTREAMS=site.registry.url("site"), CACHEMGR_WORKERS="1"))
    site.origin.down = True
    try:
        d.wait_ready()
        status, doc = d.call("POST", "/v1/resolve", {"handle": TEXT2})
        assert status == 200, (doc, d.output()[-2000:])
    finally:
        site.origin.down = False
        d.stop()
    info = json.loads(Cli(home, site.env)("info", TEXT2, "--json").out)
    assert info["manifest"] == json.loads(site.cli("info", TEXT2, "--json").out)["manifest"]
    assert info["source"].startswith("registry oci://")


def test_pull_an_artifact_reference_fetches_only_missing_blobs(site: Site) -> None:
    cli = site.fresh("by-reference")
    r = cli("pull", f"{site.registry.url('site')}/google/text-embed:1", "--json")
    assert r.code == 0, r.err
    first = json.loads(r.out)["results"][0]
    assert first["canonical"] == TEXT1 and first["new_blobs"] == len(_blobs(site.cli, TEXT1))
    r = cli("pull", f"{site.registry.url('site')}/google/text-embed:2", "--json")
    assert r.code == 0, r.err
    second = json.loads(r.out)["results"][0]
    shared = _blobs(site.cli, TEXT1) & _blobs(site.cli, TEXT2)
    assert second["new_blobs"] == len(_blobs(site.cli, TEXT2) - shared)
    r = cli("pull", f"{site.registry.url('site')}/google/nothing:1")
    assert r.code == 5 and "no such artifact" in r.err and "Traceback" not in r.err


def test_a_blob_replaced_in_the_registry_is_refused_and_nothing_becomes_visible(site: Site) -> None:
    data_row = next(row for row in _manifest(site.cli, MYMUL)["files"]  # type: ignore[attr-defined]
                    if row[0].startswith("variables/variables.data"))
    blob = site.registry.blob_file(data_row[3])
    original = blob.read_bytes()
    try:
        blob.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])  # same size, other bytes
        cli = site.fresh("tampered")
        r = cli("pull", f"{site.registry.url('site')}/google/mymul:1")
        assert r.code == 8, r.err
        assert "tampered" in r.err and data_row[3] in r.err and "Traceback" not in r.err
        assert not list((cli.home / "refs").glob("*.json"))
        assert not list((cli.home / "view").iterdir())
        assert not list((cli.home / "snapshots").iterdir())
        assert not (cli.home / "blobs/sha256" / data_row[3][:2] / data_row[3]).exists()
    finally:
        blob.write_bytes(original)
