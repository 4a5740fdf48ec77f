"""Blobs and manifests any HTTP cache can keep (issue 12): a real daemon's headers, Range and 304.

The daemon listens on TCP with a token and two processes (a worker answers some of the
requests itself), so each answer below may come from either process.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port

TFHUB = "https://tfhub.dev/google/mymul/1"
IMMUTABLE = "public, max-age=31536000, immutable"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def daemon(cli: Cli, home: Path) -> Iterator[Daemon]:
    assert cli("pull", TFHUB).code == 0
    d = Daemon(home, {**cli.env, "CACHEMGR_TOKEN": TOKEN, "CACHEMGR_WORKERS": "2"},
               listen=f"127.0.0.1:{free_port()}")
    d.wait_ready()
    yield d
    d.stop(signal.SIGKILL)


def request(d: Daemon, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    assert d.listen
    host, port = d.listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def largest_blob(home: Path) -> tuple[str, bytes]:
    path = max((p for p in (home / "blobs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    return path.name, path.read_bytes()


def manifest_digest(cli: Cli) -> str:
    digest = json.loads(cli("info", TFHUB, "--json").out)["manifest"]
    assert isinstance(digest, str)
    return digest


def test_blobs_and_manifests_carry_immutable_headers_and_need_no_token(cli: Cli, home: Path,
                                                                       daemon: Daemon) -> None:
    digest, data = largest_blob(home)
    assert len(data) > 16, "the model's largest blob is too small for the range checks"
    manifest = manifest_digest(cli)
    for path, want_digest in ((f"/v1/blobs/{digest}", digest), (f"/v1/manifests/{manifest}", manifest)):
        for _ in range(4):  # either process may answer
            status, headers, body = request(daemon, "GET", path)  # no Authorization header at all
            assert status == 200, body
            assert headers["cache-control"] == IMMUTABLE
            assert headers["etag"] == f'"{want_digest}"'
            assert headers["accept-ranges"] == "bytes"
            assert hashlib.sha256(body).hexdigest() == want_digest
            status, headers, body = request(daemon, "HEAD", path)
            assert status == 200 and body == b""
            assert headers["etag"] == f'"{want_digest}"' and headers["cache-control"] == IMMUTABLE
    assert request(daemon, "HEAD", f"/v1/blobs/{digest}")[1]["content-length"] == str(len(data))
    # The contrast: a mutating endpoint over TCP still wants the token.
    status, _, _ = request(daemon, "POST", "/v1/resolve", {"Content-Type": "application/json"},
                           json.dumps({"handle": TFHUB}).encode())
    assert status == 401


def test_range_requests_give_206_and_bad_ranges_416(home: Path, daemon: Daemon) -> None:
    digest, data = largest_blob(home)
    size, path = len(data), f"/v1/blobs/{digest}"
    for spec, start, end in (("bytes=2-9", 2, 9), ("bytes=5-", 5, size - 1), ("bytes=-7", size - 7, size - 1),
                             (f"bytes=3-{size + 100}", 3, size - 1)):
        status, headers, body = request(daemon, "GET", path, {"Range": spec})
        assert status == 206, (spec, status)
        assert body == data[start:end + 1], spec
        assert headers["content-range"] == f"bytes {start}-{end}/{size}", spec
        assert headers["etag"] == f'"{digest}"' and headers["cache-control"] == IMMUTABLE
    for spec in (f"bytes={size}-", "bytes=9-2", "bytes=0-1,4-5", "bytes=x-y", "bytes=-0"):
        status, headers, _ = request(daemon, "GET", path, {"Range": spec})
        assert status == 416, (spec, status)
        assert headers["content-range"] == f"bytes */{size}", spec
    # A unit other than bytes is ignored, and so is a Range under If-Range for other content.
    assert request(daemon, "GET", path, {"Range": "lines=1-2"})[2] == data
    status, _, body = request(daemon, "GET", path, {"Range": "bytes=0-3", "If-Range": '"other"'})
    assert status == 200 and body == data
    status, _, body = request(daemon, "GET", path, {"Range": "bytes=0-3", "If-Range": f'"{digest}"'})
    assert status == 206 and body == data[:4]


def test_if_none_match_gives_304(home: Path, daemon: Daemon) -> None:
    digest, data = largest_blob(home)
    path = f"/v1/blobs/{digest}"
    for tag in (f'"{digest}"', f'W/"{digest}"', f'"other", "{digest}"', "*"):
        status, headers, body = request(daemon, "GET", path, {"If-None-Match": tag})
        assert status == 304 and body == b"", tag
        assert headers["etag"] == f'"{digest}"' and headers["cache-control"] == IMMUTABLE
    status, _, body = request(daemon, "GET", path, {"If-None-Match": '"other"'})
    assert status == 200 and body == data
    # Absent content is a 404 whatever the conditionals say.
    assert request(daemon, "GET", f"/v1/blobs/{'0' * 64}", {"If-None-Match": "*"})[0] == 404


def test_refs_carry_a_short_max_age(daemon: Daemon) -> None:
    status, headers, body = request(daemon, "GET", f"/v1/refs?handle={TFHUB}")
    assert status == 200, body
    assert headers["cache-control"] == "max-age=60"
    status, headers, _ = request(daemon, "POST", "/v1/resolve",
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
                                 json.dumps({"handle": TFHUB}).encode())
    assert status == 200 and headers["cache-control"] == "max-age=60"
