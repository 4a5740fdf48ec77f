"""The models and archives the whole suite shares, built once per session by conftest's fixtures.

``Models`` holds the docs' MyMulModel and a text embedding in two versions sharing vocab.txt;
``Archives`` the same three as .tar.gz bytes, as an origin serves them.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .archives import archive_bytes
from .env import BASE_ENV, REPO

VOCAB = ["<unk>", "hello", "world", "cache", "manager", "tensorflow", "hub"]


@dataclass(frozen=True)
class Models:
    mymul: Path
    text_v1: Path
    text_v2: Path


@dataclass(frozen=True)
class Archives:
    mymul: bytes
    text_v1: bytes
    text_v2: bytes


def build_models(root: Path) -> Models:
    """Builds the three SavedModels under ``root``."""
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.support.models import build_mymul, build_text_embedding\n"
        f"root = Path({str(root)!r}); vocab = {VOCAB!r}\n"
        "build_mymul(root / 'mymul')\n"
        "build_text_embedding(root / 'text1', vocab, version=1)\n"
        "build_text_embedding(root / 'text2', vocab, version=2)\n"
    )
    # Built in a child so that the test process never imports TensorFlow.
    subprocess.run([sys.executable, "-c", script], check=True, env=BASE_ENV, cwd=REPO)
    return Models(root / "mymul", root / "text1", root / "text2")


def build_archives(models: Models) -> Archives:
    return Archives(
        archive_bytes(models.mymul, "gz"),
        archive_bytes(models.text_v1, "gz"),
        archive_bytes(models.text_v2, "gz"),
    )
