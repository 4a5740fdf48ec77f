"""`cachemgr verify [--repair] [--deep] [--max-duration]` on real stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cachemgr.lifecycle.scrub import run_verify
from cachemgr.lifecycle.verify import VerifyOptions
from cachemgr.settings import Settings
from cachemgr.store.objects import Store
from tests.support.archives import Member, model_members, tar_bytes
from tests.support.cli import Cli
from tests.support.env import BASE_ENV, REPO
from tests.support.lifecycle import MYMUL, TEXT1, TEXT2, consistency_problems, sha1
from tests.support.origin import FakeOrigin
from tests.support.suite import Models

GOOD, CORRUPT, REPAIRED = 0, 11, 12


def info(cli: Cli, handle: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(cli("info", handle, "--json").out)
    return doc


def manifest_files(home: Path, digest: str) -> list[list[object]]:
    files: list[list[object]] = json.loads((home / "manifests" / "sha256" / f"{digest}.json").read_bytes())["files"]
    return files


def test_clean_store_verifies(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    r = cli("verify", "--json")
    assert r.code == GOOD, r.out + r.err
    doc = json.loads(r.out)
    assert doc["outcome"] == "ok" and doc["problems"] == [] and doc["models"] == 3
    assert doc["blobs"] == len(list((home / "blobs" / "sha256").rglob("*/*")))
    assert doc["state"]["phase"] == "done" and doc["state"]["last_complete"]
    assert cli("verify", TEXT1).code == GOOD


HUB_LOAD = "import sys, tensorflow_hub as hub; hub.load(sys.argv[1]); print('LOADED')"


def test_flipped_byte_is_quarantined_no_longer_served_and_repaired(cli: Cli, home: Path,
                                                                   origin: FakeOrigin) -> None:
    assert cli("pull", MYMUL).code == 0
    digest = str(info(cli, MYMUL)["manifest"])
    path, _mode, _size, blob_sha = next(f for f in manifest_files(home, digest) if "variables.data" in str(f[0]))
    blob = home / "blobs" / "sha256" / str(blob_sha)[:2] / str(blob_sha)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    os.chmod(blob, 0o444)

    r = cli("verify", "--json")
    assert r.code == CORRUPT, r.out + r.err
    problems = json.loads(r.out)["problems"]
    assert [(p["kind"], p["subject"], p["models"]) for p in problems] == [("blob_corrupt", blob_sha, [MYMUL])]
    assert not blob.exists() and any(n.startswith("blob-" + str(blob_sha)) for n in os.listdir(home / "quarantine"))
    assert not (home / "view" / sha1(MYMUL)).exists() and not (home / "snapshots" / digest).exists()
    # tensorflow_hub no longer gets it: with no network at all, the load misses.
    assert shutil.which("unshare"), "unshare (util-linux) is required: .ci/run installs it"
    env = dict(BASE_ENV, TFHUB_CACHE_DIR=str(home / "view"))
    hub = subprocess.run(["unshare", "-n", sys.executable, "-c", HUB_LOAD, MYMUL], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert hub.returncode != 0 and "LOADED" not in hub.stdout

    downloads = origin.completed("gcs")
    r = cli("verify", "--repair", "--json")
    assert r.code == REPAIRED, r.out + r.err
    assert all(p["repaired"] for p in json.loads(r.out)["problems"])
    assert origin.completed("gcs") == downloads + 1
    assert blob.is_file() and (home / "view" / sha1(MYMUL) / str(path)).is_file()
    assert cli("verify").code == GOOD
    assert consistency_problems(home) == []


def test_deleted_snapshot_file_is_detected_and_rebuilt_locally(cli: Cli, home: Path, origin: FakeOrigin) -> None:
    assert cli("pull", TEXT1).code == 0
    digest = str(info(cli, TEXT1)["manifest"])
    (home / "snapshots" / digest / "variables" / "variables.index").unlink()
    r = cli("verify", "--json")
    assert r.code == CORRUPT
    kinds = [(p["kind"], p["message"]) for p in json.loads(r.out)["problems"]]
    assert kinds == [("snapshot_file_missing", "variables/variables.index is missing")]
    assert not (home / "view" / sha1(TEXT1)).exists()

    downloads = origin.completed("gcs")
    r = cli("verify", "--repair")
    assert r.code == REPAIRED, r.out + r.err
    assert origin.completed("gcs") == downloads  # rebuilt from the intact blobs, nothing fetched
    assert (home / "view" / sha1(TEXT1) / "variables" / "variables.index").is_file()
    assert cli("verify").code == GOOD


def test_view_problems_and_modes_are_repaired(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    (home / "view" / sha1(MYMUL)).unlink()
    os.symlink("../snapshots/" + "0" * 64, home / "view" / ("f" * 40))
    digest = str(info(cli, MYMUL)["manifest"])
    os.chmod(home / "snapshots" / digest / "saved_model.pb", 0o644)
    r = cli("verify", "--json")
    assert r.code == CORRUPT
    assert sorted(p["kind"] for p in json.loads(r.out)["problems"]) == ["snapshot_mode", "view_dangling",
                                                                        "view_missing"]
    assert cli("verify", "--repair").code == REPAIRED
    assert cli("verify").code == GOOD
    assert (home / "view" / sha1(MYMUL) / "saved_model.pb").is_file()


@pytest.fixture(scope="module")
def bad_shard_archive(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MyMul model whose variables data shard bytes were replaced before ingest."""
    members = []
    for m in model_members(models.mymul):
        if m.name.startswith("variables/variables.data-"):
            m = Member(m.name, m.type, bytes(b ^ 0xFF for b in m.data))
        members.append(m)
    path = tmp_path_factory.mktemp("bad") / "badshard.tar.gz"
    path.write_bytes(tar_bytes(members))
    return path


def test_deep_catches_a_model_that_passes_hashes_and_structure(cli: Cli, home: Path, bad_shard_archive: Path) -> None:
    bad = "https://tfhub.dev/google/badshard/1"
    assert cli("add", bad, str(bad_shard_archive)).code == 0
    assert cli("pull", MYMUL).code == 0
    assert cli("verify").code == GOOD  # every hash and the structure check pass
    # --repair cannot fix bytes that were wrong before ingest: the exit stays "corruption found".
    r = cli("verify", "--deep", "--repair", "--json", timeout=300)
    assert r.code == CORRUPT, r.out + r.err
    doc = json.loads(r.out)
    assert [(p["kind"], p["models"], p["repaired"]) for p in doc["problems"]] == [("load_failed", [bad], False)]
    assert "checksum" in doc["problems"][0]["message"]
    assert MYMUL in doc["signatures"] and bad not in doc["signatures"]


def test_max_duration_makes_a_resumable_partial_scrub(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1, TEXT2).code == 0
    store, settings = Store(home), Settings(home=home)
    total_blobs = len(list((home / "blobs" / "sha256").rglob("*/*")))
    runs, blobs, models, cursors = 0, 0, 0, []
    while True:
        report = run_verify(settings, store, VerifyOptions(max_duration=0.0, workers=1))
        runs += 1
        blobs += report.blobs
        models += report.models
        assert report.blobs + report.models > 0, "every run makes progress"
        state = json.loads((home / "scrub-state.json").read_bytes())
        cursors.append((state["phase"], state["cursor"]))
        if not report.partial:
            break
        assert runs < 50
    assert runs > 1 and blobs == total_blobs and models == 3
    assert state["phase"] == "done" and state["last_complete"] and state["blobs_done"] == total_blobs
    assert cursors == sorted(cursors[:-1], key=lambda c: (c[0] != "blobs", c[1])) + [("done", "")]
    r = cli("verify", "--max-duration", "1h", "--json")  # a new pass, completed in one run
    assert r.code == GOOD and json.loads(r.out)["partial"] is False




def flip_a_variables_byte(cli: Cli, home: Path, handle: str) -> Path:
    digest = str(info(cli, handle)["manifest"])
    blob_sha = str(next(f for f in manifest_files(home, digest) if "variables.data" in str(f[0]))[3])
    blob = home / "blobs" / "sha256" / blob_sha[:2] / blob_sha
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0x80
    blob.write_bytes(bytes(data))
    return blob


def test_repair_from_a_bundle_without_network(cli: Cli, home: Path, origin: FakeOrigin, tmp_path: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    bundle = tmp_path / "mymul.tar.zst"
    assert cli("export", MYMUL, "-o", str(bundle)).code == 0
    blob = flip_a_variables_byte(cli, home, MYMUL)
    origin.down = True
    downloads = origin.completed("gcs")
    r = cli("verify", "--repair", "--from-bundle", str(bundle), "--json")
    assert r.code == REPAIRED, r.out + r.err
    assert [p["action"] for p in json.loads(r.out)["problems"]] == ["imported from the bundle"]
    assert origin.completed("gcs") == downloads and blob.is_file()
    assert cli("verify").code == GOOD


def test_from_bundle_that_is_not_a_bundle_says_so(cli: Cli, home: Path, tmp_path: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    flip_a_variables_byte(cli, home, MYMUL)
    r = cli("verify", "--from-bundle", str(tmp_path / "missing.tar.zst"))
    assert r.code == 1 and "no such file" in r.err
