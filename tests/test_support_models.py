"""Self-checks for the SavedModel builders of tests/support, with real tensorflow_hub (in a
subprocess, so that TF_USE_LEGACY_KERAS is set before TensorFlow loads)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support import archives as A
from tests.support.origin import FakeOrigin

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
