"""Self-checks for tests/support: the fake origin (plain urllib) and the SavedModel builders
(real tensorflow_hub, in a subprocess so TF_USE_LEGACY_KERAS is set before TF loads)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
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


# ----------------------------------------------------------------------------- real TF Hub

_MYMUL_SCRIPT = r"""
import json, sys
import tensorflow as tf
import tensorflow_hub as hub

handle, init = sys.argv[1], float(sys.argv[2])
m = hub.load(handle)
y = m(tf.constant([2.0])).numpy().tolist()
layer = hub.KerasLayer(handle, trainable=True)
model = tf.keras.Sequential([layer])
model.build([None])
print(json.dumps({
    "y": y,
    "losses": [float(x) for x in layer.losses],
    "trainable": [v.name for v in layer.trainable_weights],
    "keras": type(model).__module__,
}))
"""

_EMBED_SCRIPT = r"""
import json, sys
import tensorflow as tf
import tensorflow_hub as hub

out = {}
for handle in sys.argv[1:]:
    emb = hub.load(handle)
    y = emb(tf.constant(["hello world", "cat", "", "unknown words"]))
    layer = hub.KerasLayer(handle, input_shape=[], dtype=tf.string, trainable=True)
    model = tf.keras.Sequential([layer, tf.keras.layers.Dense(1)])
    z = model(tf.constant(["the dog"]))
    out[handle] = {"shape": list(y.shape), "y": y.numpy().tolist(), "z": list(z.shape),
                   "trainable": len(layer.trainable_weights)}
print(json.dumps(out))
"""


_BUILD_SCRIPT = r"""
import sys
from pathlib import Path
from tests.support.models import build_mymul, build_text_embedding

root = Path(sys.argv[1])
vocab = sys.argv[2].split(",")
build_mymul(root / "mymul", init=3.0)
build_text_embedding(root / "te1", vocab, version=1, dim=4)
build_text_embedding(root / "te2", vocab, version=2, dim=4)
"""

VOCAB = ["hello", "world", "cat", "dog", "the"]
REPO = Path(__file__).resolve().parents[1]


def _tf_env(cache_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    if cache_dir is not None:
        env["TFHUB_CACHE_DIR"] = str(cache_dir)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MyMul and two text-embedding versions, built in a child: pytest never imports TF."""
    root = tmp_path_factory.mktemp("selfcheck-models")
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD_SCRIPT, str(root), ",".join(VOCAB)],
        env=_tf_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def _run_tf(script: str, args: list[str], cache_dir: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=_tf_env(cache_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_mymul_through_real_tensorflow_hub(built: Path, tmp_path: Path) -> None:
    archive = A.make_archive(built / "mymul", tmp_path / "mymul.tar.gz", "gz", dot_prefix=True)
    with FakeOrigin(local_redirects=True) as o:
        o.add_model("test", "mymul", 1, archive.read_bytes())
        handle = o.local_handle("test", "mymul", 1)
        res = _run_tf(_MYMUL_SCRIPT, [handle, "3.0"], tmp_path / "hubcache")
        assert o.completed("gcs") == 1
    assert res["y"] == [6.0]
    assert res["losses"] and abs(res["losses"][0] - 0.009) < 1e-6  # type: ignore[index]
    assert res["trainable"] == ["v:0"]
    assert str(res["keras"]).startswith("tf_keras")


def test_text_embedding_versions(built: Path, tmp_path: Path) -> None:
    archives = {v: A.archive_bytes(built / f"te{v}", "gz") for v in (1, 2)}
    m1, m2 = (A.archive_members(archives[v]) for v in (1, 2))
    vocab_bytes = "".join(w + "\n" for w in VOCAB).encode()
    assert m1["assets/vocab.txt"] == m2["assets/vocab.txt"] == vocab_bytes
    data = "variables/variables.data-00000-of-00001"
    assert m1[data] != m2[data]
    with FakeOrigin(local_redirects=True) as o:
        handles = []
        for v in (1, 2):
            o.add_model("test", "embed", v, archives[v])
            handles.append(o.local_handle("test", "embed", v))
        res = _run_tf(_EMBED_SCRIPT, handles, tmp_path / "hubcache")
    r1, r2 = (res[h] for h in handles)
    assert r1["shape"] == r2["shape"] == [4, 4]  # type: ignore[index]
    assert r1["z"] == [1, 1] and r1["trainable"] == 1  # type: ignore[index]
    assert r1["y"] != r2["y"]  # type: ignore[index]
    assert r1["y"][2] == [0.0, 0.0, 0.0, 0.0]  # type: ignore[index]


def test_hostile_builders_with_a_real_model(built: Path) -> None:
    mymul = built / "mymul"
    names = set(A.archive_members(A.missing_shard_archive(mymul)))
    assert "variables/variables.index" in names
    assert not any(n.startswith("variables/variables.data-") for n in names)
    long_names = A.archive_members(A.long_names_archive(mymul))
    assert long_names[A.LONG_ASSET_NAME] == b"long name asset\n"
    assert b"path=" in gzip.decompress(A.long_names_archive(mymul))  # a PAX header
    assert "saved_model.pb" not in A.archive_members(A.no_saved_model_archive(mymul))
    for build in (A.hostile_symlink, A.hostile_chardev, A.hostile_fifo):
        members = [m for m in _names(build(mymul)) if m == "assets"]
        assert members == ["assets"]  # the model's own assets/ is not repeated


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return tar.getnames()
