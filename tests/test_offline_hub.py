"""Unchanged hub.load / hub.KerasLayer code loads pulled models with no network at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.cli import Cli
from tests.support.env import BASE_ENV, REPO
from tests.support.origin import FakeOrigin

MYMUL = "https://tfhub.dev/google/mymul/1"
MYMUL_KAGGLE = "https://www.kaggle.com/models/google/mymul/frameworks/tensorFlow2/variations/mymul/versions/1"
TEXT = "https://tfhub.dev/google/text-embed/1"


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


def test_offline_hub_code_loads_from_the_view(cli: Cli, origin: FakeOrigin, home: Path) -> None:
    assert shutil.which("unshare"), "unshare (util-linux) is required: .ci/run installs it"
    r = cli("pull", MYMUL, TEXT)
    assert r.code == 0, r.err
    env_lines = cli("env").out
    assert f"export TFHUB_CACHE_DIR={home / 'view'}" in env_lines
    before = digest_tree(home / "blobs")

    env = dict(BASE_ENV, TFHUB_CACHE_DIR=str(home / "view"))
    host, port = origin.base.removeprefix("http://").split(":")
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, str(REPO / "tests" / "offline_hub_job.py"),
         MYMUL, MYMUL_KAGGLE, TEXT, host, port],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["network"].startswith("unreachable"), out["network"]
    assert out["load"] == [6.0]
    assert out["load_kaggle_alias"] == [3.0]
    assert out["losses"] and out["losses"][0] > 0
    assert out["trainable"] and out["trainable"][0].startswith("v")
    assert out["v_before_after"][0] == 3.0 and out["v_before_after"][1] != 3.0
    assert out["reexport"] == [10.0]
    assert out["text_shape"][0] == 2

    # The stored copy is untouched, and hub wrote nothing (no locks, no downloads) into the view.
    assert digest_tree(home / "blobs") == before
    for name, digest in before.items():
        assert name.endswith(digest)
    leftovers = [n for n in os.listdir(home / "view") if n.endswith((".lock", ".tmp"))]
    assert leftovers == []
