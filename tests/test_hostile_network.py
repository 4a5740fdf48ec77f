"""`cachemgr pull` against a stalled or hostile HTTP server (tests/support/hostile_http.py).

Each case runs the real CLI in a child process against a real server thread on 127.0.0.1
and checks what an operator sees: exit code 7, one line naming the URL and the fix, and a
store with nothing left behind (no ref, no snapshot, no temp; ``cachemgr verify`` passes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli, Result
from tests.support.hostile_http import HostileOrigin
from tests.support.suite import Archives

# Generous: a pull that the low-speed rule does not end runs for hours against the drip.
TIMEOUT = 180


@pytest.fixture
def hostile(archives: Archives) -> Iterator[HostileOrigin]:
    with HostileOrigin(archives.mymul) as server:
        yield server


def assert_failed_cleanly(cli: Cli, home: Path, r: Result, url: str, *words: str) -> None:
    assert r.code == 7, (r.code, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    line = lines[0]
    assert line.startswith("cachemgr: error: ") and url.split("?")[0] in line, line
    for word in words:
        assert word in line, (word, line)
    for sub in ("refs", "snapshots", "manifests/sha256", "view", "tmp"):
        d = home / sub
        assert not d.is_dir() or os.listdir(d) == [], (sub, os.listdir(d))
    v = cli("verify")
    assert v.code == 0, v.out + v.err


def test_dripping_server_is_a_stall_resumed_then_an_error(cli: Cli, hostile: HostileOrigin,
                                                          home: Path) -> None:
    """One byte every 2 s never trips the 300 s read timeout; the low-speed rule ends it."""
    hostile.drip_fast, hostile.drip_interval = 100, 2.0
    url = hostile.url("drip")
    began = time.monotonic()
    r = cli("pull", url, env={"CACHEMGR_LOW_SPEED_LIMIT": "1K", "CACHEMGR_LOW_SPEED_TIME": "2s"}, timeout=TIMEOUT)
    took = time.monotonic() - began
    assert_failed_cleanly(cli, home, r, url, "stalled", "CACHEMGR_LOW_SPEED_LIMIT",
                          "CACHEMGR_LOW_SPEED_TIME")
    # Retried (CACHEMGR_RETRIES=3) and each retry resumed where the last one stalled.
    ranges = [s.range for s in hostile.paths("drip")]
    assert len(ranges) == 4 and ranges[0] is None, ranges
    offsets = [int(rng.split("=")[1].rstrip("-")) for rng in ranges[1:] if rng]
    assert len(offsets) == 3 and offsets == sorted(offsets) and offsets[0] >= 100, ranges
    print(f"stalled pull failed after {took:.1f}s, ranges {ranges}")


def test_slow_transfer_above_the_limit_succeeds(cli: Cli, hostile: HostileOrigin, home: Path,
                                                tmp_path: Path) -> None:
    """A slow line is not a stall: ~4 s at three times the limit, over several 1 s windows."""
    size = len(hostile.archive)
    hostile.slow_chunk, hostile.slow_interval = max(64, size // 40), 0.1
    limit = hostile.slow_chunk * 10 // 3  # bytes/s: a third of what the server sends
    config = tmp_path / "xdg-config" / "cachemgr" / "config.toml"  # the cli fixture's XDG_CONFIG_HOME
    config.parent.mkdir(parents=True)
    config.write_text(f'low_speed_limit = "{limit}"\nlow_speed_time = "1s"\n')
    began = time.monotonic()
    r = cli("pull", hostile.url("slow"), "--json", timeout=TIMEOUT)
    took = time.monotonic() - began
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["status"] == "pulled" and doc["resumes"] == 0
    assert [s.range for s in hostile.paths("slow")] == [None]
    assert (home / "snapshots" / doc["manifest"] / "saved_model.pb").is_file()
    assert took > 3, took  # it really was slow: several windows of the rule went by
    print(f"slow pull of {size} bytes at ~{limit * 3} B/s (limit {limit} B/s) took {took:.1f}s")


def test_redirect_loop_is_one_clear_error(cli: Cli, hostile: HostileOrigin, home: Path) -> None:
    url = hostile.url("loop")
    r = cli("pull", url, timeout=TIMEOUT)
    assert_failed_cleanly(cli, home, r, url, "redirect loop", "/loop/a", "CACHEMGR_MIRRORS")
    assert len(hostile.paths("loop")) == 10  # followed to the hop limit once, not retried


@pytest.mark.parametrize("count,size", [(1, 256 * 1024), (1000, 100)], ids=["long-line", "many-lines"])
def test_oversized_response_headers_are_refused(cli: Cli, hostile: HostileOrigin, home: Path,
                                                count: int, size: int) -> None:
    hostile.header_count, hostile.header_bytes = count, size
    url = hostile.url("headers")
    r = cli("pull", url, timeout=TIMEOUT)
    assert_failed_cleanly(cli, home, r, url, "headers are too large", "refused", "HTTPS_PROXY")
    assert len(hostile.paths("headers")) == 1  # the same answer again would not help: not retried


@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["with-the-headers", "after-the-body"])
def test_body_longer_than_content_length_is_refused(cli: Cli, hostile: HostileOrigin, home: Path,
                                                    pause: float) -> None:
    """The archive is whole per its Content-Length, yet more bytes follow: a lying server."""
    hostile.long_pause = pause
    url = hostile.url("long")
    r = cli("pull", url, timeout=TIMEOUT)
    assert_failed_cleanly(cli, home, r, url, "Content-Length", "refused")
    assert len(hostile.paths("long")) == 1


def test_gzip_bomb_on_a_redirect_is_never_read(cli: Cli, hostile: HostileOrigin, home: Path) -> None:
    """A 302 whose body is 64 MiB of gzip (64 GiB inflated): followed, its body left unread."""
    r = cli("pull", hostile.url("bomb"), "--json", timeout=TIMEOUT)
    assert r.code == 0, r.err
    doc = json.loads(r.out)["results"][0]
    assert doc["status"] == "pulled" and doc["url"].startswith(hostile.url("ok"))
    assert (home / "snapshots" / doc["manifest"] / "saved_model.pb").is_file()
    # What the server got into the socket before the client hung up: buffers, not the bomb.
    assert hostile.bomb_sent < 8 << 20, hostile.bomb_sent
    assert cli("verify").code == 0
