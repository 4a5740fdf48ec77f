"""Archives built to exhaust memory (issue 10): huge PAX / GNU long-name headers, header floods,
sparse members and zstd bombs, added with the real ``cachemgr add`` in a child whose address
space is capped (``RLIMIT_AS``), so that reading one of them into memory fails the test.

Each is refused with exit 9 and one line naming the limit, the store verifies clean, and
nothing is left in its tmp dir or written outside it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from cachemgr.ingest.tarheaders import MAX_CHAIN, MAX_GLOBAL_BYTES, MAX_HEADER_BYTES
from tests.support import hostile_archives as H
from tests.support.archives import PLACEHOLDER_PB
from tests.support.env import BASE_ENV, REPO

BAD_ARCHIVE = 9
MEMORY_CAP = 1024 * 1024 * 1024  # far below what the bombs would take if read into memory
HANDLE = "https://tfhub.dev/evil/bomb/1"

CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "pax header 1.5 GiB": (lambda: H.huge_extended_header(b"x"), "PAX header of"),
    "global pax header 1.5 GiB": (lambda: H.huge_extended_header(b"g"), "global PAX header of"),
    "gnu long name 1.5 GiB": (lambda: H.huge_extended_header(b"L"), "GNU long name of"),
    "gnu long link 1.5 GiB": (lambda: H.huge_extended_header(b"K"), "GNU long link name of"),
    "global header flood": (lambda: H.global_header_flood(MAX_HEADER_BYTES, MAX_GLOBAL_BYTES // MAX_HEADER_BYTES + 1),
                            "bytes of global PAX headers"),
    "header chain": (lambda: H.extended_header_chain(MAX_CHAIN + 1), "extended tar headers in a row"),
    "sparse member": (H.sparse_member, "GNU sparse file"),
    "zstd bomb 8 GiB": (lambda: H.zero_bomb(8 * H.GIB), "unpacks to more than"),
}


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def add(home: Path, archive: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(BASE_ENV, CACHEMGR_HOME=str(home), **env)
    return subprocess.run([sys.executable, "-m", "cachemgr", "add", HANDLE, str(archive)], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=120, preexec_fn=_cap_memory)


@pytest.mark.parametrize("case", sorted(CASES))
def test_memory_bomb_archive_is_refused_before_it_is_read(case: str, tmp_path: Path) -> None:
    build, needle = CASES[case]
    archive = tmp_path / "bomb.tar.zst"
    archive.write_bytes(build())
    assert archive.stat().st_size < 8 * 1024 * 1024  # the bomb is small; what it claims is not
    home = tmp_path / "home"
    r = add(home, archive, CACHEMGR_MAX_MODEL_SIZE="64M")
    assert_refused_clean(tmp_path, home, r, needle)


def _sparse_map_bomb(numbers: int = 3 * H.GIB // 4) -> bytes:
    """A PAX sparse member, format 1.0: its map (a count, then offset/size numbers a line each) is the
    first data of the member, and tarfile reads it into a list, however many numbers it claims:
    ``numbers`` lines of "0" are ``8 * numbers`` bytes of list (6 GiB), in 1.5 GiB of tar data."""
    records = b"".join(H.pax_record(k, v) for k, v in (("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                                                        ("GNU.sparse.name", "saved_model.pb"),
                                                        ("GNU.sparse.realsize", "1024")))
    first = b"%d\n" % numbers
    first += b"0\n" * ((H.BLOCK - len(first)) // 2) + b"\n" * ((H.BLOCK - len(first)) % 2)
    size = H.BLOCK + 2 * numbers
    frame = zstandard.ZstdCompressor(level=1).compress(b"0\n" * (H.ZERO_FRAME // 2))  # zstd frames concatenate
    assert 2 * numbers % H.ZERO_FRAME == 0
    return (H.zstd_chain([H.header("pax", b"x", len(records)), records + b"\0" * (-len(records) % H.BLOCK),
                          H.header("GNUSparseFile.0/saved_model.pb", b"0", size), first])
            + frame * (2 * numbers // H.ZERO_FRAME) + H.zstd_chain([b"\0" * (2 * H.BLOCK)]))


def _sparse_pax(*records: tuple[str, str]) -> bytes:
    """A member whose PAX header carries GNU sparse records (formats 0.0 and 0.1) filling ~1 MiB."""
    body = b"".join(H.pax_record(k, v) for k, v in records)
    pb = PLACEHOLDER_PB
    return H.zstd_chain([H.header("pax", b"x", len(body)), body + b"\0" * (-len(body) % H.BLOCK),
                         H.header("saved_model.pb", b"0", len(pb)), pb + b"\0" * (-len(pb) % H.BLOCK),
                         b"\0" * (2 * H.BLOCK)])


SPARSE_PAX: dict[str, Callable[[], bytes]] = {
    "1.0 map of 805M numbers in the data": _sparse_map_bomb,
    "0.1 GNU.sparse.map of 1 MiB": lambda: _sparse_pax(
        ("GNU.sparse.size", "1024"), ("GNU.sparse.map", ",".join(["0"] * (MAX_HEADER_BYTES // 2 - 64)))),
    "0.0 GNU.sparse.offset/numbytes repeated": lambda: _sparse_pax(
        ("GNU.sparse.size", "1024"), *[(k, "0") for _ in range(MAX_HEADER_BYTES // 64)
                                       for k in ("GNU.sparse.offset", "GNU.sparse.numbytes")]),
}


@pytest.mark.parametrize("case", sorted(SPARSE_PAX))
def test_pax_sparse_member_is_refused_before_its_map_is_read(case: str, tmp_path: Path) -> None:
    """GNU sparse members in PAX form (``GNU.sparse.*`` records), refused as type ``S`` ones are; no
    model-size cap here (the 64 GiB default), so nothing but that refusal stops the 1.0 map."""
    archive = tmp_path / "bomb.tar.zst"
    archive.write_bytes(SPARSE_PAX[case]())
    assert archive.stat().st_size < 8 * 1024 * 1024
    home = tmp_path / "home"
    assert_refused_clean(tmp_path, home, add(home, archive), "GNU sparse file")


def assert_refused_clean(tmp_path: Path, home: Path, r: subprocess.CompletedProcess[str], needle: str) -> None:
    """Exit 9 and one line naming ``needle``; no temps, no ref, nothing outside the store; it verifies."""
    assert r.returncode == BAD_ARCHIVE, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "refused" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["bomb.tar.zst", "home"], "something was written outside the store"
    assert sorted(os.listdir(home / "tmp")) == [], "the refused archive left temps behind"
    assert not (home / "refs").is_dir() or os.listdir(home / "refs") == []
    v = subprocess.run([sys.executable, "-m", "cachemgr", "verify", "--json"], cwd=REPO,
                       env=dict(BASE_ENV, CACHEMGR_HOME=str(home)), capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and json.loads(v.stdout)["models"] == 0, v.stdout + v.stderr


def test_memory_cap_lets_a_genuine_archive_through(tmp_path: Path) -> None:
    """The control: the same capped child adds a well-formed archive with long PAX names."""
    pb = PLACEHOLDER_PB
    parts: list[bytes | H.Zeros] = []
    for leaf in ("b", "c"):
        record = H.pax_record("path", "assets/" + "a" * 200 + "/" + leaf * 200)  # names the next member
        parts += [H.header("pax", b"x", len(record)), record + b"\0" * (-len(record) % H.BLOCK),
                  H.header("ignored", b"0", 5), b"hello" + b"\0" * (H.BLOCK - 5)]
    parts += [H.header("saved_model.pb", b"0", len(pb)), pb + b"\0" * (-len(pb) % H.BLOCK), b"\0" * (2 * H.BLOCK)]
    archive = tmp_path / "ok.tar.zst"
    archive.write_bytes(H.zstd_chain(parts))
    r = add(tmp_path / "home", archive)
    assert r.returncode == 0, r.stderr[-2000:]
    files = json.loads(subprocess.run([sys.executable, "-m", "cachemgr", "info", HANDLE, "--json"], cwd=REPO,
                                      env=dict(BASE_ENV, CACHEMGR_HOME=str(tmp_path / "home")),
                                      capture_output=True, text=True, timeout=60).stdout)["files"]
    assert files == 3, files
