"""Pure functions: handles, settings, sizes, SavedModel structure, exit-code table."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachemgr.errors import (
    EXIT_CODES,
    CachemgrError,
    ConfigError,
    FetchError,
    HandleError,
    ModelStructureError,
    OfflineMissError,
    TruncatedDownloadError,
    exit_code_for,
)
from cachemgr.fetch.http import md5_of, rewrite
from cachemgr.handles import parse_handle, with_compressed_query
from cachemgr.settings import load_settings
from cachemgr.store.objects import Store
from cachemgr.store.savedmodel import check_structure
from cachemgr.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "kind", "canonical"),
    [
        ("https://tfhub.dev/google/nnlm-en-dim128/2", "tfhub", "https://tfhub.dev/google/nnlm-en-dim128/2"),
        ("https://tfhub.dev/google/nnlm-en-dim128/2/", "tfhub", "https://tfhub.dev/google/nnlm-en-dim128/2"),
        ("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5", "tfhub",
         "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"),
        ("https://www.kaggle.com/models/google/bert/tensorFlow2/en-uncased/3", "kaggle",
         "https://www.kaggle.com/models/google/bert/tensorFlow2/en-uncased/3"),
        ("https://kaggle.com/models/google/bert/frameworks/tensorFlow2/variations/en-uncased/versions/3"
         "?tfhub-redirect=true", "kaggle", "https://www.kaggle.com/models/google/bert/tensorFlow2/en-uncased/3"),
        ("google/bert/tensorFlow2/en-uncased/3", "kaggle",
         "https://www.kaggle.com/models/google/bert/tensorFlow2/en-uncased/3"),
        ("https://hub.tensorflow.google.cn/google/nnlm-en-dim128/2", "tfhub_cn",
         "https://hub.tensorflow.google.cn/google/nnlm-en-dim128/2"),
        ("HTTP://Mirror.Internal:8470/google/x/1/?tf-hub-format=compressed", "http",
         "http://mirror.internal:8470/google/x/1"),
    ],
)
def test_handle_forms(text: str, kind: str, canonical: str) -> None:
    h = parse_handle(text)
    assert (h.kind, h.canonical) == (kind, canonical)
    assert text.strip() in h.aliases() and h.canonical in h.aliases()


def test_kaggle_aliases_cover_both_forms_and_slashes() -> None:
    h = parse_handle("google/bert/tensorFlow2/en/3")
    aliases = set(h.aliases())
    for host in ("https://www.kaggle.com", "https://kaggle.com"):
        for path in ("/models/google/bert/tensorFlow2/en/3",
                     "/models/google/bert/frameworks/tensorFlow2/variations/en/versions/3"):
            assert host + path in aliases and host + path + "/" in aliases


def test_china_handles_download_from_gcs_cn() -> None:
    h = parse_handle("https://hub.tensorflow.google.cn/google/x/1")
    assert h.fetch_url == "https://gcs.tensorflow.google.cn/tfhub-modules/google/x/1.tar.gz"
    assert not h.compressed_query


@pytest.mark.parametrize("text", [
    "", "   ", "foo", "ftp://tfhub.dev/a/b/1", "https://tfhub.dev/google/x", "https://tfhub.dev/a/b/latest",
    "a/b/c/d", "https://www.kaggle.com/datasets/a/b", "https://www.kaggle.com/models/a/b/c",
    "https://tfhub.dev/../etc/1", "https://", "http://host/",
])
def test_malformed_handles(text: str) -> None:
    with pytest.raises(HandleError) as exc:
        parse_handle(text)
    message = str(exc.value)
    assert message.startswith("invalid handle") and "expected e.g." in message and "\n" not in message


def test_compressed_query_is_merged() -> None:
    assert with_compressed_query("https://a/b?x=1") == "https://a/b?x=1&tf-hub-format=compressed"
    assert with_compressed_query("https://a/b?tf-hub-format=x") == "https://a/b?tf-hub-format=compressed"


def test_mirror_rewrite_longest_prefix_wins(tmp_path: Path) -> None:
    s = load_settings({"HOME": str(tmp_path), "CACHEMGR_MIRRORS":
                       "https://tfhub.dev/=http://a/ https://tfhub.dev/google/=http://b/"})
    assert rewrite("https://tfhub.dev/google/x/1", s.mirrors) == "http://b/x/1"
    assert rewrite("https://tfhub.dev/other/x/1", s.mirrors) == "http://a/other/x/1"
    assert rewrite("https://example.com/x", s.mirrors) == "https://example.com/x"


def test_md5_from_x_goog_hash() -> None:
    assert md5_of("crc32c=AAAAAA==,md5=q83vEjRWeJA=") == "q83vEjRWeJA="
    assert md5_of("crc32c=AAAAAA==") is None and md5_of(None) is None


def test_settings_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('home = "/from/file"\nretries = 2\nmax_model_size = "1G"\n')
    s = load_settings({"HOME": str(tmp_path), "CACHEMGR_RETRIES": "7"}, cfg, {"home": Path("/flag")})
    assert (s.home, s.retries, s.max_model_bytes) == (Path("/flag"), 7, 1024**3)
    d = load_settings({"HOME": str(tmp_path)})
    assert d.home == tmp_path / ".cache" / "cachemgr" and Store(d.home).view == d.home / "view"
    x = load_settings({"HOME": str(tmp_path), "XDG_CACHE_HOME": "/xdg"})
    assert x.home == Path("/xdg/cachemgr")


@pytest.mark.parametrize(("env", "needle"), [
    ({"CACHEMGR_OFFLINE": "maybe"}, "not a boolean"),
    ({"CACHEMGR_RETRIES": "-1"}, "below the minimum"),
    ({"CACHEMGR_CONCURRENCY": "x"}, "not a whole number"),
    ({"CACHEMGR_CA_BUNDLE": "/no/such/ca.pem"}, "does not exist"),
    ({"CACHEMGR_MIRRORS": "ftp://a/=http://b/"}, "must start with http"),
    ({"CACHEMGR_WORKERS": "0"}, "below the minimum"),
    ({"CACHEMGR_WORKERS": "65"}, "use 'auto' or fewer"),
    ({"CACHEMGR_WORKERS": "many"}, "not a whole number"),
])
def test_bad_env_settings(env: dict[str, str], needle: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"HOME": str(tmp_path), **env})
    assert needle in str(exc.value) and next(iter(env)) in str(exc.value)


def test_worker_count(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    auto = load_settings(env)
    assert auto.workers is None and auto.worker_count(2) == 1 and auto.worker_count(3) == 1
    assert auto.worker_count(4) == 2 and auto.worker_count(64) == 4 and auto.worker_count(None) == 1
    assert load_settings({**env, "CACHEMGR_WORKERS": "3"}).worker_count(64) == 3
    cfg = tmp_path / "c.toml"
    cfg.write_text("workers = 1\n")
    assert load_settings(env, cfg).worker_count(8) == 1
    assert load_settings(env, cfg, {"workers": "auto"}).worker_count(8) == 4  # the flag wins, 'auto' too


def test_shared_counters_sum_slots_and_survive_reopening(tmp_path: Path) -> None:
    from cachemgrd.counters import SharedCounters

    primary = SharedCounters(tmp_path / "counters", 4, create=True)
    worker = SharedCounters(tmp_path / "counters", 4)  # another mapping of the same file, as in a worker
    a, b = worker.slot(0), worker.slot(3)
    for _ in range(5):
        a.request()
        a.hit()
    b.request()
    b.forwarded()
    assert primary.totals() == {"requests": 6, "hits": 5, "forwarded": 1}
    worker.close()
    again = SharedCounters(tmp_path / "counters", 4).slot(0)  # a replacement worker in the same slot
    again.hit()
    assert again.get("hits") == 6 and primary.totals()["hits"] == 6
    with pytest.raises(ValueError):
        primary.slot(4)
    with pytest.raises(FileExistsError):
        SharedCounters(tmp_path / "counters", 4, create=True)  # never two primaries on one file


def test_sizes_and_durations() -> None:
    assert parse_size("1.5G") == int(1.5 * 1024**3) and parse_size("200MB") == 200 * 1000**2
    assert parse_duration("1h") == 3600 and parse_duration("90s") == 90
    for bad in ("lots", "1X", "-3"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_structure_check() -> None:
    ok = ["saved_model.pb", "variables/variables.index",
          "variables/variables.data-00000-of-00002", "variables/variables.data-00001-of-00002"]
    check_structure(ok, "m")
    check_structure(["tfhub_module.pb"], "m")
    check_structure(["saved_model.pbtxt", "assets/vocab.txt"], "m")
    with pytest.raises(ModelStructureError, match="1 of 2 variables data shard"):
        check_structure(ok[:3], "m")
    with pytest.raises(ModelStructureError, match="repack so that its directory"):
        check_structure(["model/saved_model.pb"], "m")
    with pytest.raises(ModelStructureError, match="no variables.index"):
        check_structure(["saved_model.pb", "variables/variables.data-00000-of-00001"], "m")


def test_exit_code_table_is_most_specific() -> None:
    assert exit_code_for(OfflineMissError("x")) == 6
    assert exit_code_for(TruncatedDownloadError("x")) == 7
    assert exit_code_for(FetchError("x")) == 7
    assert exit_code_for(CachemgrError("x")) == 1
    assert len(set(EXIT_CODES.values())) >= 9


def test_scan_view_finds_locks_and_real_directories_only(tmp_path: Path) -> None:
    from cachemgrd.watch import scan_view

    view = tmp_path / "view"
    view.mkdir()
    real, linked = "a" * 40, "b" * 40
    (view / real).mkdir()
    (view / linked).symlink_to(tmp_path)  # a cachemgr link to a directory: not for adoption
    (view / f"{real}.descriptor.txt").write_text("Module: x\n")
    (view / f"{'c' * 40}.lock").write_text("host.1.uuid")
    (view / ("d" * 39)).mkdir()  # not a hub entry name
    assert scan_view(view) == ([f"{'c' * 40}.lock"], [real])
    assert scan_view(tmp_path / "missing") == ([], [])


def test_usable_cpus_follows_the_affinity_of_the_process() -> None:
    import subprocess
    import sys

    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from cachemgr.settings import usable_cpus; print(usable_cpus())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"  # one allowed core (as in a Slurm allocation of one): one process
