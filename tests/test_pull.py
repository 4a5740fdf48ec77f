"""`cachemgr pull` against the fake tfhub.dev -> kaggle -> signed-URL origin."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.support.archives import html_error_page
from tests.support.cli import Cli
from tests.support.origin import FakeOrigin

TFHUB = "https://tfhub.dev/google/mymul/1"
KAGGLE_SHORT = "https://www.kaggle.com/models/google/mymul/tensorFlow2/mymul/1"
KAGGLE_LONG = (
    "https://www.kaggle.com/models/google/mymul/frameworks/tensorFlow2/variations/mymul/versions/1"
)


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def store_state(home: Path) -> dict[str, list[str]]:
    """Everything a failed pull must not have touched (tmp excluded: it must be empty)."""
    out = {}
    for sub in ("refs", "aliases", "snapshots", "manifests/sha256", "view"):
        d = home / sub
        out[sub] = sorted(os.listdir(d)) if d.is_dir() else []
    return out


def assert_clean(home: Path, before: dict[str, list[str]]) -> None:
    assert store_state(home) == before
    assert not list((home / "tmp").iterdir()), "a failed pull left temp files behind"


def test_pull_follows_redirect_chain_and_learns_kaggle_aliases(cli: Cli, origin: FakeOrigin,
                                                                home: Path) -> None:
    r = cli("pull", TFHUB + "/", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["status"] == "pulled"
    assert doc["canonical"] == TFHUB
    assert doc["url"].startswith("https://storage.googleapis.com/kaggle-models-data/")
    for alias in (TFHUB, TFHUB + "/", KAGGLE_SHORT, KAGGLE_LONG, KAGGLE_LONG + "/"):
        assert alias in doc["aliases"]
        link = home / "view" / sha1(alias)
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert (link / "saved_model.pb").is_file()
        assert (home / "view" / f"{sha1(alias)}.descriptor.txt").is_file()
    assert origin.completed("gcs") == 1

    info = json.loads(cli("info", TFHUB, "--json").out)
    assert info["etag"] and "md5=" in info["x_goog_hash"]
    assert info["archive_size"] == len(origin.archive("google", "mymul", 1))

    # Every learned form is now a hit, without touching the origin again.
    origin.reset_counters()
    for form in (KAGGLE_SHORT, KAGGLE_LONG, "google/mymul/tensorFlow2/mymul/1"):
        again = json.loads(cli("pull", form, "--json").out)["results"][0]
        assert again["status"] == "present", form
        assert again["manifest"] == doc["manifest"]
        p = cli("path", form)
        assert p.code == 0 and Path(p.out.strip()) == home / "snapshots" / doc["manifest"]
    assert origin.requests == []


def test_snapshot_is_content_addressed_and_read_only(cli: Cli, home: Path) -> None:
    assert cli("pull", TFHUB).code == 0
    doc = json.loads(cli("info", TFHUB, "--json").out)
    snap = Path(doc["path"])
    manifest = json.loads((home / "manifests" / "sha256" / f"{doc['manifest']}.json").read_bytes())
    assert hashlib.sha256((home / "manifests/sha256" / f"{doc['manifest']}.json").read_bytes()
                          ).hexdigest() == doc["manifest"]
    for path, _mode, size, digest in manifest["files"]:
        f = snap / path
        blob = home / "blobs" / "sha256" / digest[:2] / digest
        assert f.stat().st_size == size
        assert os.path.samestat(f.stat(), blob.stat()), "snapshot file is not a hard link"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
        assert blob.stat().st_mode & 0o222 == 0, "blobs must be read-only"
    assert json.loads((home / "store-format").read_text())["format"] == 1


def test_two_versions_share_the_vocabulary_blob(cli: Cli, home: Path) -> None:
    r = cli("pull", "https://tfhub.dev/google/text-embed/1", "https://tfhub.dev/google/text-embed/2",
            "--json")
    assert r.code == 0, r.err
    v1, v2 = json.loads(r.out)["results"]
    assert v1["manifest"] != v2["manifest"]
    s1 = home / "snapshots" / v1["manifest"] / "assets" / "vocab.txt"
    s2 = home / "snapshots" / v2["manifest"] / "assets" / "vocab.txt"
    assert os.path.samestat(s1.stat(), s2.stat())
    assert s1.stat().st_nlink == 3  # blob + two snapshots
    assert v1["new_blobs"] + v2["new_blobs"] < v1["files"] + v2["files"]


def test_resume_with_range_after_truncation(cli: Cli, origin: FakeOrigin) -> None:
    origin.truncate("gcs", after_bytes=1000, times=2)
    r = cli("pull", TFHUB, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["resumes"] == 2
    ranges = [req.range for req in origin.requests_of("gcs")]
    assert ranges == [None, "bytes=1000-", "bytes=2000-"]


def test_expired_signed_url_is_resolved_again(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    """The transfer breaks, the signed URL expires before the resume: resolve again, resume."""
    import subprocess
    import sys
    import time

    origin.truncate("gcs", after_bytes=1500)
    env = {**cli.env, "CACHEMGR_HOME": str(home), "CACHEMGR_BACKOFF": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "cachemgr", "pull", TFHUB, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while origin.started("gcs") < 1 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the cut comes right after the first 1500 bytes; the client backs off >= 0.75 s
    origin.advance(7200)  # every signed URL issued so far is now expired
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    gcs = origin.requests_of("gcs")
    assert [(q.status, q.range) for q in gcs] == [
        (200, None), (403, "bytes=1500-"), (206, "bytes=1500-")
    ]
    assert [q.status for q in origin.requests_of("tfhub")] == [302, 302]
    assert json.loads(out)["results"][0]["resumes"] == 1


def test_retry_on_5xx_then_success(cli: Cli, origin: FakeOrigin) -> None:
    origin.fail("tfhub", 503, times=2)
    r = cli("pull", TFHUB)
    assert r.code == 0, r.err
    assert [q.status for q in origin.requests_of("tfhub")] == [503, 503, 302]


def test_persistent_5xx_fails_with_status(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    origin.fail("gcs", 502, times=None)
    r = cli("pull", TFHUB)
    assert r.code == 7
    assert "HTTP 502" in r.err and "try again later" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (home / "refs").exists() or not os.listdir(home / "refs")


def test_404_and_403_are_clear_errors(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    r = cli("pull", "https://tfhub.dev/google/no-such-model/1")
    assert r.code == 7 and "not found upstream (HTTP 404)" in r.err
    origin.fail("tfhub", 403)
    r = cli("pull", TFHUB)
    assert r.code == 7 and "HTTP 403" in r.err and "access denied" in r.err
    assert os.listdir(home / "refs") == []


def test_html_body_is_not_a_model_archive(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    origin.fail("gcs", 200, body=html_error_page(), content_type="text/html")
    r = cli("pull", TFHUB)
    assert r.code == 9 and "not a model archive" in r.err and "HTML" in r.err
    assert_clean(home, store_state(home))
    assert os.listdir(home / "refs") == []


def test_md5_mismatch_is_refused(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    origin.wrong_md5 = True
    r = cli("pull", TFHUB)
    assert r.code == 8 and "md5" in r.err and "x-goog-hash" in r.err
    assert os.listdir(home / "refs") == [] and os.listdir(home / "snapshots") == []
    assert not list((home / "tmp").iterdir())


def test_failed_pull_keeps_existing_models(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    assert cli("pull", "https://tfhub.dev/google/text-embed/1").code == 0
    before = store_state(home)
    origin.truncate("gcs", after_bytes=100, times=None)
    r = cli("pull", TFHUB)
    assert r.code == 7 and ("truncated" in r.err or "broke off" in r.err)
    assert_clean(home, before)
    assert cli("path", "https://tfhub.dev/google/text-embed/1").code == 0


def test_offline_miss_and_hit(cli: Cli, origin: FakeOrigin) -> None:
    r = cli("--offline", "pull", TFHUB)
    assert r.code == 6
    assert TFHUB in r.err and "cachemgr import" in r.err and "offline" in r.err
    assert origin.requests == []
    assert cli("pull", TFHUB).code == 0
    origin.reset_counters()
    r = cli("pull", TFHUB + "/", env={"CACHEMGR_OFFLINE": "1"})
    assert r.code == 0 and r.out.startswith("present")
    assert origin.requests == []


def test_concurrent_pulls_of_several_handles(cli: Cli, origin: FakeOrigin) -> None:
    origin.delay("gcs", 0.5, times=3)
    r = cli("pull", TFHUB, "https://tfhub.dev/google/text-embed/1",
            "https://tfhub.dev/google/text-embed/2", "--json")
    assert r.code == 0, r.err
    assert [d["status"] for d in json.loads(r.out)["results"]] == ["pulled"] * 3
    assert origin.completed("gcs") == 3


def test_china_mirror_and_generic_hosting(cli: Cli, origin: FakeOrigin) -> None:
    r = cli("pull", "https://hub.tensorflow.google.cn/google/mymul/1", "--json")
    assert r.code == 0, r.err
    assert origin.completed("gcscn") == 1
    url = origin.hosting_url("google", "mymul", 1)
    r = cli("pull", url, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["canonical"] == url and url + "/" in doc["aliases"]
    assert origin.requests_of("hosting")[0].path_qs.endswith("?tf-hub-format=compressed")


def test_one_bad_handle_among_good_ones(cli: Cli) -> None:
    r = cli("pull", TFHUB, "not a handle", "--json")
    assert r.code == 4
    results = json.loads(r.out)["results"]
    assert results[0]["status"] == "pulled"
    assert results[1]["error"]["type"] == "bad_handle"


def test_pulls_run_concurrently(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    """While the first transfer is held mid-body, the other two still complete."""
    import subprocess
    import sys
    import time

    release = origin.hold("gcs", after_bytes=100, times=1)
    env = {**cli.env, "CACHEMGR_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachemgr", "pull", TFHUB, "https://tfhub.dev/google/text-embed/1",
         "https://tfhub.dev/google/text-embed/2"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while origin.completed("gcs") < 2 and time.time() < deadline:
        time.sleep(0.02)
    done_while_held = origin.completed("gcs")
    release.set()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert done_while_held == 2
    assert origin.completed("gcs") == 3


def test_connection_drops_are_retried(cli: Cli, origin: FakeOrigin) -> None:
    origin.fail("kaggle", 0, times=2)  # status 0: the connection is closed without an answer
    r = cli("pull", TFHUB)
    assert r.code == 0, r.err
    assert [q.status for q in origin.requests_of("kaggle")] == [0, 0, 302]


def test_down_origin_fails_cleanly(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    origin.down = True
    r = cli("pull", TFHUB)
    assert r.code == 7 and ("cannot connect" in r.err or "HTTP" in r.err)
    assert os.listdir(home / "refs") == [] and os.listdir(home / "tmp") == []


@pytest.mark.parametrize("form", [
    "google/mymul/tensorFlow2/mymul/1", KAGGLE_SHORT, KAGGLE_LONG + "/",
])
def test_pull_by_kaggle_forms(cli: Cli, origin: FakeOrigin, home: Path, form: str) -> None:
    r = cli("pull", form, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["canonical"] == KAGGLE_SHORT
    assert origin.requests_of("tfhub") == [] and origin.completed("gcs") == 1
    for alias in (KAGGLE_SHORT, KAGGLE_LONG, KAGGLE_SHORT + "/"):
        assert (home / "view" / sha1(alias) / "saved_model.pb").is_file()
