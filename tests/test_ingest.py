"""Safe ingest through `cachemgr add`: hostile and broken archives, quirks, formats."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import archives as A
from tests.support.cli import Cli
from tests.support.suite import Archives, Models

HANDLE = "https://tfhub.dev/test/model/1"


def snapshot_of_store(home: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(home):
        rel = os.path.relpath(root, home)
        out[rel] = sorted(dirs + files)
    return out


@pytest.fixture
def seeded(cli: Cli, archives: Archives, tmp_path: Path) -> dict[str, list[str]]:
    """A store that already holds one model, which every failure must leave intact."""
    src = tmp_path / "seed.tar.gz"
    src.write_bytes(archives.text_v1)
    r = cli("add", "https://tfhub.dev/google/seed/1", str(src))
    assert r.code == 0, r.err
    return snapshot_of_store(cli.home)


BAD: dict[str, tuple[Callable[[Models, Archives], bytes], int, str]] = {
    "absolute": (lambda m, a: A.hostile_absolute_path(m.mymul), 9, "absolute path"),
    "dotdot": (lambda m, a: A.hostile_dotdot(m.mymul), 9, "points outside the archive"),
    "symlink": (lambda m, a: A.hostile_symlink(m.mymul), 9, "is a symlink"),
    "hardlink": (lambda m, a: A.hostile_hardlink(m.mymul), 9, "is a hard link"),
    "chardev": (lambda m, a: A.hostile_chardev(m.mymul), 9, "character device"),
    "fifo": (lambda m, a: A.hostile_fifo(m.mymul), 9, "is a fifo"),
    "html": (lambda m, a: A.html_error_page(), 9, "not a model archive (got an HTML page)"),
    "empty": (lambda m, a: b"", 9, "not a model archive"),
    "truncated": (lambda m, a: A.truncated_archive(a.mymul, 0.5), 9, "truncated"),
    "crc": (lambda m, a: A.corrupt_crc_archive(a.mymul), 9, "CRC check failed"),
    "no_saved_model": (lambda m, a: A.no_saved_model_archive(m.mymul), 9, "no saved_model.pb"),
    "missing_shard": (lambda m, a: A.missing_shard_archive(m.mymul), 9, "no variables.data-* shard"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archives_are_refused_without_a_trace(
    case: str, cli: Cli, models: Models, archives: Archives, tmp_path: Path,
    seeded: dict[str, list[str]],
) -> None:
    make, code, needle = BAD[case]
    src = tmp_path / "bad.tar.gz"
    src.write_bytes(make(models, archives))
    escape = Path("/tmp/cachemgr-escape.txt")
    escape.unlink(missing_ok=True)
    r = cli("add", HANDLE, str(src))
    assert r.code == code, (r.code, r.err)
    assert needle in r.err, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cachemgr: error: ")
    assert "Traceback" not in r.err
    assert snapshot_of_store(cli.home) == seeded, "the store changed"
    assert not escape.exists() and not (tmp_path.parent / "cachemgr-escape.txt").exists()
    assert cli("path", "https://tfhub.dev/google/seed/1").code == 0


def test_bomb_stops_at_the_size_cap(cli: Cli, tmp_path: Path, seeded: dict[str, list[str]]) -> None:
    src = tmp_path / "bomb.tar.gz"
    src.write_bytes(A.bomb_archive(50 * 1024 * 1024))
    assert src.stat().st_size < 1024 * 1024
    r = cli("add", HANDLE, str(src), env={"CACHEMGR_MAX_MODEL_SIZE": "8M"})
    assert r.code == 9 and "archive bomb" in r.err and "CACHEMGR_MAX_MODEL_SIZE" in r.err
    assert snapshot_of_store(cli.home) == seeded
    # With a higher cap the same stream is read to the end; then the structure check refuses it
    # (its 50 MB shard has no variables.index), which shows it was the cap that stopped it above.
    r = cli("add", HANDLE, str(src), env={"CACHEMGR_MAX_MODEL_SIZE": "64M"})
    assert r.code == 9 and "archive bomb" not in r.err and "variables.index" in r.err


def test_entry_cap(cli: Cli, tmp_path: Path, seeded: dict[str, list[str]]) -> None:
    src = tmp_path / "many.tar.gz"
    src.write_bytes(A.many_entries_archive(3000))
    r = cli("add", HANDLE, str(src), env={"CACHEMGR_MAX_ENTRIES": "1000"})
    assert r.code == 9 and "more than 1000 entries" in r.err
    assert snapshot_of_store(cli.home) == seeded


@pytest.mark.parametrize("compression", ["gz", "zst", "none"])
@pytest.mark.parametrize("dot_prefix", [False, True])
def test_formats_and_tar_quirks(cli: Cli, models: Models, tmp_path: Path, compression: str,
                                dot_prefix: bool) -> None:
    src = tmp_path / "model.archive"  # no telling extension: the format is sniffed
    A.make_archive(models.mymul, src, compression, dot_prefix=dot_prefix)  # type: ignore[arg-type]
    r = cli("add", HANDLE, str(src), "--json")
    assert r.code == 0, r.err
    snap = Path(cli("path", HANDLE).out.strip())
    assert sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*")) == sorted(
        p.relative_to(models.mymul).as_posix() for p in models.mymul.rglob("*")
    )


def test_long_names_and_pax_headers(cli: Cli, models: Models, tmp_path: Path) -> None:
    src = tmp_path / "long.tgz"
    src.write_bytes(A.long_names_archive(models.mymul, dot_prefix=True))
    r = cli("add", HANDLE, str(src))
    assert r.code == 0, r.err
    snap = Path(cli("path", HANDLE).out.strip())
    assert (snap / A.LONG_ASSET_NAME).is_file()
    assert len(A.LONG_ASSET_NAME) > 100


def test_add_directory_and_dedup(cli: Cli, models: Models, tmp_path: Path) -> None:
    r1 = cli("add", "https://tfhub.dev/test/dir/1", str(models.text_v1), "--json")
    assert r1.code == 0, r1.err
    src = tmp_path / "v2.tar.zst"
    A.make_archive(models.text_v2, src, "zst")
    r2 = cli("add", "https://tfhub.dev/test/dir/2", str(src), "--json")
    assert r2.code == 0, r2.err
    d2 = json.loads(r2.out)
    # v2 shares vocab.txt (and maybe more) with v1: fewer new blobs than files.
    assert d2["new_blobs"] < d2["files"]


def test_add_refuses_symlink_in_directory(cli: Cli, models: Models, tmp_path: Path) -> None:
    import shutil
    src = tmp_path / "withlink"
    shutil.copytree(models.mymul, src)
    os.symlink("/etc/passwd", src / "passwd")
    r = cli("add", HANDLE, str(src))
    assert r.code == 9 and "symlink" in r.err
    assert not os.listdir(cli.home / "refs")


def test_add_missing_path(cli: Cli, tmp_path: Path) -> None:
    r = cli("add", HANDLE, str(tmp_path / "nope.tar.gz"))
    assert r.code == 2 and "does not exist" in r.err  # bad input, not a store error (was 10)


def test_blobs_on_another_filesystem_fall_back_to_copies(cli: Cli, archives: Archives, tmp_path: Path) -> None:
    """blobs/ on tmpfs (/dev/shm), the rest on disk: hard links fail with EXDEV, copies are used."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    assert shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "needs /dev/shm as tmpfs"
    blobs = Path(tempfile.mkdtemp(dir=shm))
    try:
        (cli.home / "blobs").mkdir(parents=True)
        os.symlink(blobs, cli.home / "blobs" / "sha256")
        src = tmp_path / "m.tar.gz"
        src.write_bytes(archives.text_v1)
        r = cli("add", HANDLE, str(src), "--json")
        assert r.code == 0, r.err
        snap = Path(cli("path", HANDLE).out.strip())
        vocab = snap / "assets" / "vocab.txt"
        digest = next(f[3] for f in json.loads((cli.home / "manifests" / "sha256" / (
            json.loads(r.out)["manifest"] + ".json")).read_text())["files"] if f[0] == "assets/vocab.txt")
        blob = blobs / digest[:2] / digest
        assert blob.read_bytes() == vocab.read_bytes()
        assert not os.path.samestat(os.stat(blob), os.stat(vocab))  # a copy, not a link
        assert not [p for p in blobs.rglob(".*")], "temp copies left beside the blobs"
    finally:
        shutil.rmtree(blobs, ignore_errors=True)
