"""Self-checks for tests/support: the fake origin (plain urllib) and the archive builders.

The SavedModel builders are checked with real tensorflow_hub in test_support_models.py."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import os
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.support import archives as A
    from tests.support.crc32c import crc32c, crc32c_py
    from tests.support.origin import FakeOrigin
except ModuleNotFoundError:  # plain `pytest` without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support import archives as A
    from tests.support.crc32c import crc32c, crc32c_py
    from tests.support.origin import FakeOrigin



ARCHIVE = A.tar_bytes(
    [
        A.Member("saved_model.pb", data=A.PLACEHOLDER_PB),
        A.Member("variables", tarfile.DIRTYPE),
        A.Member("variables/variables.data-00000-of-00001", data=os.urandom(300_000)),
    ]
)

# Never use an environment proxy for 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


RAW_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, list[str]], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with RAW_OPENER.open(req, timeout=10) as r:
            hdrs: dict[str, list[str]] = {}
            for k, v in r.headers.items():
                hdrs.setdefault(k.lower(), []).append(v)
            return r.status, hdrs, r.read()
    except urllib.error.HTTPError as e:
        hdrs = {}
        for k, v in e.headers.items():
            hdrs.setdefault(k.lower(), []).append(v)
        return e.code, hdrs, e.read()


@pytest.fixture
def origin() -> Iterator[FakeOrigin]:
    with FakeOrigin(local_redirects=True) as o:
        o.add_model("test", "blob", 1, ARCHIVE)
        yield o


def test_chain_end_to_end(origin: FakeOrigin) -> None:
    url = f"{origin.base}/tfhub/test/blob/1?tf-hub-format=compressed"
    with OPENER.open(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.read() == ARCHIVE
    assert [(q.kind, q.status) for q in origin.requests] == [
        ("tfhub", 302),
        ("kaggle", 302),
        ("gcs", 200),
    ]
    assert origin.started("gcs") == origin.completed("gcs") == 1
    # Without the query parameter tfhub.dev answers with an HTML page, trailing slash or not.
    for suffix in ("", "/"):
        status, hdrs, body = _get(f"{origin.base}/tfhub/test/blob/1{suffix}")
        assert status == 200 and body.startswith(b"<!DOCTYPE html>")


def test_public_locations_and_mirrors() -> None:
    with FakeOrigin() as o:
        o.add_model("test", "blob", 1, ARCHIVE)
        b = o.base
        assert o.mirrors == (
            f"https://tfhub.dev/={b}/tfhub/ https://www.kaggle.com/={b}/kaggle/ "
            f"https://storage.googleapis.com/={b}/gcs/ https://gcs.tensorflow.google.cn/={b}/gcscn/"
        )
        status, hdrs, _ = _get(o.rewrite("https://tfhub.dev/test/blob/1?tf-hub-format=compressed"))
        loc = hdrs["location"][0]
        assert status == 302
        assert loc == (
            "https://www.kaggle.com/models/test/blob/frameworks/tensorFlow2/variations/blob"
            "/versions/1?tfhub-redirect=true&tf-hub-format=compressed"
        )
        status, hdrs, _ = _get(o.rewrite(loc))
        loc = hdrs["location"][0]
        assert status == 302
        assert loc.startswith("https://storage.googleapis.com/kaggle-models-data/")
        assert "X-Goog-Signature=" in loc and "X-Goog-Expires=3600" in loc
        status, _, body = _get(o.rewrite(loc))
        assert status == 200 and body == ARCHIVE
        # Short Kaggle form.
        status, hdrs, _ = _get(
            f"{b}/kaggle/models/test/blob/tensorflow2/blob/1?tf-hub-format=compressed"
        )
        assert status == 302 and hdrs["location"][0].startswith("https://storage.googleapis.com/")


def test_expired_and_bad_signature(origin: FakeOrigin) -> None:
    signed = origin.signed_url("test", "blob", 1)
    assert _get(signed)[0] == 200
    origin.advance(3601)
    status, _, body = _get(signed)
    assert status == 403 and b"<Code>ExpiredToken</Code>" in body
    origin.reset()
    tampered = origin.signed_url("test", "blob", 1).replace(
        "X-Goog-Expires=3600", "X-Goog-Expires=9999"
    )
    status, _, body = _get(tampered)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    unsigned = origin.signed_url("test", "blob", 1).split("?")[0]
    assert _get(unsigned)[0] == 403


def test_range_head_and_hashes(origin: FakeOrigin) -> None:
    signed = origin.signed_url("test", "blob", 1)
    status, hdrs, body = _get(signed, {"Range": "bytes=100-"})
    assert status == 206 and body == ARCHIVE[100:]
    assert hdrs["content-range"] == [f"bytes 100-{len(ARCHIVE) - 1}/{len(ARCHIVE)}"]
    status, hdrs, body = _get(signed, {"Range": "bytes=10-19"})
    assert status == 206 and body == ARCHIVE[10:20]
    status, _, body = _get(signed, {"Range": "bytes=-5"})
    assert status == 206 and body == ARCHIVE[-5:]
    assert _get(signed, {"Range": f"bytes={len(ARCHIVE)}-"})[0] == 416
    # HEAD: headers only, full length.
    status, hdrs, body = _get(signed, method="HEAD")
    assert status == 200 and body == b"" and hdrs["content-length"] == [str(len(ARCHIVE))]
    assert hdrs["accept-ranges"] == ["bytes"]
    # x-goog-hash: split into two headers like real GCS.
    hashes = dict(v.split("=", 1) for v in hdrs["x-goog-hash"])
    assert base64.b64decode(hashes["md5"]) == hashlib.md5(ARCHIVE).digest()
    assert base64.b64decode(hashes["crc32c"]) == crc32c(ARCHIVE).to_bytes(4, "big")
    assert hdrs["etag"] == [f'"{hashlib.md5(ARCHIVE).hexdigest()}"']
    # A stale If-Range gives the full body.
    status, _, body = _get(signed, {"Range": "bytes=10-19", "If-Range": '"stale"'})
    assert status == 200 and body == ARCHIVE
    origin.wrong_md5 = True
    _, hdrs, _ = _get(signed, method="HEAD")
    md5 = dict(v.split("=", 1) for v in hdrs["x-goog-hash"])["md5"]
    assert base64.b64decode(md5) != hashlib.md5(ARCHIVE).digest()
    assert origin.started("gcs") == origin.completed("gcs") == 4


def test_crc32c_known_vector() -> None:
    assert crc32c_py(b"123456789") == crc32c(b"123456789") == 0xE3069283


def test_truncate(origin: FakeOrigin) -> None:
    signed = origin.signed_url("test", "blob", 1)
    origin.truncate("gcs", 1000)
    with OPENER.open(signed, timeout=10) as r:
        assert r.headers["Content-Length"] == str(len(ARCHIVE))
        with pytest.raises(http.client.IncompleteRead) as exc:
            r.read()
    assert exc.value.partial == ARCHIVE[:1000]
    origin.truncate("gcs", 50)
    req = urllib.request.Request(signed, headers={"Range": "bytes=500-"})
    with OPENER.open(req, timeout=10) as r:
        assert r.status == 206
        with pytest.raises(http.client.IncompleteRead) as exc:
            r.read()
    assert exc.value.partial == ARCHIVE[500:550]
    assert origin.started("gcs") == 2 and origin.completed("gcs") == 0
    with OPENER.open(signed, timeout=10) as r:  # knob used up
        assert r.read() == ARCHIVE
    assert origin.completed("gcs") == 1


def test_fail_down_and_other_routes(origin: FakeOrigin) -> None:
    url = f"{origin.base}/tfhub/test/blob/1?tf-hub-format=compressed"
    origin.fail("gcs", 503, times=2, body=b"busy")
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as exc:
            OPENER.open(url, timeout=10)
        assert exc.value.code == 503
    assert OPENER.open(url, timeout=10).read() == ARCHIVE
    origin.fail("kaggle", 200, body=A.html_error_page(), content_type="text/html")
    assert OPENER.open(url, timeout=10).read().startswith(b"<!DOCTYPE html>")
    origin.fail("tfhub", 0)
    with pytest.raises((http.client.RemoteDisconnected, urllib.error.URLError, ConnectionError)):
        OPENER.open(url, timeout=10)
    origin.down = True
    with pytest.raises((http.client.RemoteDisconnected, urllib.error.URLError, ConnectionError)):
        OPENER.open(url, timeout=10)
    origin.down = False
    assert _get(f"{origin.base}/tfhub/test/nope/1?tf-hub-format=compressed")[0] == 404
    status, _, body = _get(origin.gcscn_url("test", "blob", 1))
    assert status == 200 and body == ARCHIVE
    status, _, body = _get(origin.hosting_url("test", "blob", 1) + "?tf-hub-format=compressed")
    assert status == 200 and body == ARCHIVE
    assert origin.completed("gcscn") == 1 and origin.completed("hosting") == 1
    assert origin.requests[-1] == (
        "hosting",
        "GET",
        "/hosting/test/blob/1?tf-hub-format=compressed",
        None,
        200,
    )


def test_hold_and_stop_are_clean() -> None:
    o = FakeOrigin(local_redirects=True).start()
    o.add_model("test", "blob", 1, ARCHIVE)
    ev = o.hold("gcs", after_bytes=4096)
    got: list[bytes] = []
    signed = o.signed_url("test", "blob", 1)
    t = threading.Thread(target=lambda: got.append(OPENER.open(signed, timeout=10).read()))
    t.start()
    deadline = time.monotonic() + 5
    while o.started("gcs") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert o.started("gcs") == 1 and o.completed("gcs") == 0
    ev.set()
    t.join(10)
    assert got == [ARCHIVE] and o.completed("gcs") == 1
    server_thread = o._thread
    assert server_thread is not None and server_thread.is_alive()
    o.stop()
    o.stop()  # idempotent
    assert not server_thread.is_alive()


# ----------------------------------------------------------------------------- archives


def test_hostile_archives() -> None:
    def types(data: bytes) -> dict[str, bytes]:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
            return {m.name: m.type for m in tar.getmembers()}

    assert "/tmp/cachemgr-escape.txt" in types(A.hostile_absolute_path())
    assert any(".." in n for n in types(A.hostile_dotdot()))
    assert types(A.hostile_symlink())["assets/link"] == tarfile.SYMTYPE
    assert types(A.hostile_hardlink())["assets/hard"] == tarfile.LNKTYPE
    assert types(A.hostile_chardev())["assets/null"] == tarfile.CHRTYPE
    assert types(A.hostile_fifo())["assets/fifo"] == tarfile.FIFOTYPE
    bomb = A.bomb_archive()
    assert len(bomb) < 200_000 and len(gzip.decompress(bomb)) > 50 * 1024 * 1024
    assert len(types(A.many_entries_archive())) > 10_000
    with pytest.raises((EOFError, tarfile.ReadError)):
        A.archive_members(A.truncated_archive(ARCHIVE))
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(A.corrupt_crc_archive(ARCHIVE))
    assert "saved_model.pb" not in types(A.no_saved_model_archive())
    assert A.html_error_page().startswith(b"<!DOCTYPE html>")
